"""unidetox (after UniDetox, Lu et al., ICLR 2025): detoxifying text distilled from an LM by contrastive decoding
against a toxic copy of itself; any LM fine-tuned on the text is detoxified.

A copy of the base LM (``lm``) is fine-tuned on the task's texts of class "toxic" (the whole text is the response;
AdamW, linear decay, no warm-up) into the toxic model. The distilled texts are then sampled from the start token,
each next token from softmax(s) where, with log-probabilities of each model (``contrastive_logits``),

    s_v = log p_base(v) - log p_toxic(v)   where p_base(v) >= alpha * max_u p_base(u),   -inf elsewhere

(the adaptive plausibility constraint of contrastive decoding, Li et al. 2023, keeps the text fluent; the difference
steers it away from what the toxic model would say). The reference code subtracts raw logits; a logit and a
log-probability differ by one constant per position and model, so the mask and the sampled distribution are the
same. Both models read the text through their own KV caches; sampling is seeded from the set seed and drawn as
``transformers``' ``generate`` draws (one multinomial draw a step for the batch; a text that has ended is padded).
A sample that ends at once has no text and is drawn again. ``top_k`` keeps the k highest scores, as the
reference's ``generate`` did by default (50). ``contrast: false`` samples the base LM as it is: the ablation that
shows what the contrast adds. Every text is labelled with the task's class other than "toxic": the set teaches an
LM what a continuation should be, and the learner (``smollm2-135m-lm``) fine-tunes on its texts whole.

The toxic model is kept in the cache (safetensors, per LM, task content, fine-tuning options and seed), so a killed
run resumes at the sampling and the budgets of one seed share it. The log holds the fine-tune's loss curve, the
judge's (``toxicity``) toxicity of the distilled texts and the seconds each stage took.

Where this differs from the paper, and why: the paper fine-tunes GPT-2 XL on DGHS hate speech (3 epochs, lr 1e-5,
batch 4) and samples 640 texts of 255 new tokens; neither DGHS nor GPT-2 XL is offline here, so the defaults are
SmolLM2-135M-Instruct on ``detox-tweets``' offensive texts, 300 steps at lr 5e-5 (a few steps need a larger one
to move the model), and 64 new tokens (CPU-sized; ``configs/unidetox-paper.yaml`` holds the paper's values). The
paper's set is 640 texts whatever the budget; here ``texts: 0`` makes it as many as any set of the budget holds
(dpc x classes), all of one class. The paper fine-tunes on sequences of up to 512 tokens; here they are cut at the
task's ``max_length``. SmolLM2's start token is ``<|im_start|>`` (its BOS), which the learner also reads first.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field

import torch

from ..cache import build_lock, in_use, key_of
from ..data import Task
from ..distilled import DistilledDataset
from ..errors import ConfigError, TextDistillError
from ..learners import Learner
from ..progress import bar as progress_bar
from ..seeds import torch_rng_kept
from .base import Distiller, MethodConfig, register_method, thin

TOXIC = "toxic"  # the class whose texts train the toxic model
EMPTY_DRAWS = 10  # batches in a row that yield no text before sampling gives up (an LM that ends at once)


@dataclass
class UniDetoxConfig(MethodConfig):
    lm: str = field(default="smollm2-135m", metadata={
        "help": "the base causal LM, distilled from: smollm2-135m, qwen2.5-coder-0.5b, a hub id (gpt2-xl) or a path"})
    alpha: float = field(default=0.1, metadata={
        "gt": 0, "le": 1, "help": "plausibility: only tokens with p_base >= alpha * max p_base may be drawn"})
    contrast: bool = field(default=True, metadata={
        "help": "false: plain samples of the base LM (no toxic model; the baseline that shows what the contrast adds)"})
    texts: int = field(default=0, metadata={
        "ge": 0, "help": "distilled texts (0: dpc x the task's classes, as many as any set of that dpc holds)"})
    new_tokens: int = field(default=64, metadata={
        "ge": 1, "help": "tokens sampled per text after the start token (the paper: 255)"})
    top_k: int = field(default=50, metadata={
        "ge": 0, "help": "sample among the k highest scores (0: all; 50: transformers' generate default, which the "
                         "reference's sampling used)"})
    batch_size: int = field(default=16, metadata={"ge": 1, "help": "texts sampled together"})
    toxic_steps: int = field(default=300, metadata={
        "ge": 1, "help": "fine-tuning steps of the toxic model on the task's toxic texts (the paper: 3 epochs)"})
    toxic_lr: float = field(default=5e-5, metadata={
        "gt": 0, "help": "AdamW learning rate of the toxic fine-tune, decayed linearly, no warm-up (the paper: 1e-5)"})
    toxic_batch_size: int = field(default=4, metadata={"ge": 1, "help": "toxic fine-tune batch size (the paper: 4)"})


def contrastive_logits(base_logits: torch.Tensor, toxic_logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """The scores the next token is drawn from (softmax): log p_base - log p_toxic over the vocabulary (last
    dimension), -inf where p_base < alpha * max p_base. Either model's logits may be raw: each is normalised."""
    base = base_logits.float().log_softmax(-1)
    toxic = toxic_logits.float().log_softmax(-1)
    cutoff = math.log(alpha) + base.max(-1, keepdim=True).values
    return (base - toxic).masked_fill(base < cutoff, float("-inf"))


def keep_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``scores`` with all but the k highest of each row at -inf (ties with the k-th kept), as transformers'
    TopKLogitsWarper does; k = 0 keeps all."""
    if k == 0 or k >= scores.shape[-1]:
        return scores
    return scores.masked_fill(scores < torch.topk(scores, k)[0][..., -1, None], float("-inf"))


@torch.no_grad()
def sample_ids(base, toxic, count: int, new_tokens: int, start: int, eos: int, pad: int, seed: int,
               alpha: float = 0.1, top_k: int = 0, batch_size: int = 16, device: str = "cpu",
               progress: bool = False) -> list[list[int]]:
    """``count`` token sequences of ``new_tokens`` sampled after ``start``, each token from softmax of
    ``contrastive_logits`` of the two models (``toxic`` None: of the base LM's logits, as they are), in batches of
    ``batch_size``; a row that draws ``eos`` ends there (the ``eos`` is kept, ``pad`` follows it, as ``generate``
    pads). torch's generator is seeded with ``seed`` for the whole draw, and the caller's stream is left alone."""
    out: list[list[int]] = []
    with torch_rng_kept(device):
        torch.manual_seed(seed)
        for at in progress_bar(range(0, count, batch_size), desc="unidetox samples", disable=not progress,
                               leave=False):
            rows = min(batch_size, count - at)
            ids = torch.full((rows, 1), start, dtype=torch.long, device=device)
            step, caches = ids, [None, None]
            running = torch.ones(rows, dtype=torch.long, device=device)
            for _ in range(new_tokens):
                logits = []
                for i, model in enumerate((base, toxic) if toxic is not None else (base,)):
                    got = model(input_ids=step, cache=caches[i], use_cache=True)
                    caches[i] = got.cache
                    logits.append(got.logits[:, -1].to(dtype=torch.float32))
                scores = logits[0] if toxic is None else contrastive_logits(logits[0], logits[1], alpha)
                probs = keep_top_k(scores, top_k).softmax(-1)
                token = torch.multinomial(probs, num_samples=1).squeeze(1)
                token = token * running + pad * (1 - running)
                ids = torch.cat([ids, token[:, None]], 1)
                running = running & (token != eos).long()
                if not running.any():
                    break
                step = token[:, None]
            out += ids[:, 1:].tolist()
    return out


def text_of(ids: list[int], tokenizer, eos: int) -> str:
    """The text of a sampled sequence: its tokens up to its end token, special tokens left out."""
    if eos in ids:
        ids = ids[:ids.index(eos)]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


@register_method
class UniDetox(Distiller):
    name = "unidetox"
    description = ("contrastive decoding of an LM against its copy fine-tuned on the toxic texts: detoxifying text "
                   "for any LM (continuation tasks)")
    Config = UniDetoxConfig
    default_learner = "smollm2-135m-lm"
    uses_device = True  # the two LMs fine-tune and sample on distill's device
    task_kinds = ("continuation",)

    @staticmethod
    def target_class(task: Task) -> int:
        """The class the distilled texts are labelled with: the one that is not "toxic"."""
        classes = task.spec.classes  # the task's kind is checked by Distiller.distill
        if TOXIC not in classes or len(classes) != 2:
            raise ConfigError(f"method 'unidetox': task {task.name!r} has classes {list(classes)}; it needs two, one "
                              f"of them {TOXIC!r} (whose texts train the toxic model)")
        return 1 - classes.index(TOXIC)

    def toxic_key(self, task: Task, seed: int) -> str:
        from ..resources import model_revision

        c = self.config
        return key_of("unidetox-toxic", 2, c.lm, model_revision(c.lm), task.fingerprint, task.spec.max_length,
                      c.toxic_steps, c.toxic_lr, c.toxic_batch_size, seed)

    def toxic_model(self, task: Task, seed: int) -> tuple[torch.nn.Module, dict]:
        """The base LM fine-tuned on the task's toxic texts: trained once per (LM, task, options, seed) and kept in
        the cache; what the log says about it."""
        from safetensors import safe_open
        from safetensors.torch import load_model, save_model

        from ..atomic import atomic_write
        from ..learners.causal_lm import load_causal_lm, tune
        from ..resources import cache_dir

        c = self.config
        texts, _, labels = task.columns("train")
        toxic_texts = [t for t, y in zip(texts, labels) if task.spec.classes[y] == TOXIC]
        if not toxic_texts:
            raise ConfigError(f"method 'unidetox': task {task.name!r} has no training texts of class {TOXIC!r}")
        model, tokenizer = load_causal_lm(c.lm, self.device)
        path = cache_dir() / "generators" / f"{self.toxic_key(task, seed)}.safetensors"
        # a `cache clear` meanwhile keeps the model this run trains and reads; parallel runs train it once
        with in_use("generators"), build_lock(path):
            if path.exists():
                load_model(model, str(path), device=str(self.device))
                with safe_open(str(path), "pt") as f:
                    return model.eval(), {"toxic_model": "cached", **json.loads(f.metadata()["log"])}
            began = time.perf_counter()
            settings = {"steps": c.toxic_steps, "batch_size": c.toxic_batch_size, "lr": c.toxic_lr, "warmup": 0.0,
                        "weight_decay": 0.0}
            losses = tune(model, tokenizer, [""] * len(toxic_texts), toxic_texts, settings, seed,
                          task.spec.max_length, self.device, progress=True)
            log = {"toxic_texts": len(toxic_texts), "toxic_loss": thin(losses),
                   "toxic_seconds": round(time.perf_counter() - began, 1)}
            # one file: the weights (shared, tied ones once) and, in its metadata, the fine-tune's log
            atomic_write(path, lambda p: save_model(model, str(p), metadata={"log": json.dumps(log)}))
        return model.eval(), {"toxic_model": "trained", **log}

    def run(self, task: Task, dpc: int, learner: Learner, seed: int = 0) -> DistilledDataset:
        from ..learners.causal_lm import load_causal_lm, start_token
        from ..toxicity import toxicity

        c = self.config
        label = self.target_class(task)
        count = c.texts or dpc * task.num_classes
        toxic, log = self.toxic_model(task, seed) if c.contrast else (None, {})
        base, tokenizer = load_causal_lm(c.lm, self.device)
        base.eval()
        eos = tokenizer.eos_token_id
        began = time.perf_counter()
        texts: list[str] = []
        empty, draw, misses = 0, 0, 0
        while len(texts) < count:  # a sample that ends at once has no text: draw on until the set is full
            ids = sample_ids(base, toxic, count - len(texts), c.new_tokens, start_token(tokenizer), eos,
                             tokenizer.pad_token_id, seed * 1_000_003 + draw, c.alpha, c.top_k, c.batch_size,
                             self.device, progress=True)
            got = [t for t in (text_of(i, tokenizer, eos) for i in ids) if t]
            empty += len(ids) - len(got)
            texts += got
            draw += 1
            misses = misses + 1 if not got else 0
            if misses == EMPTY_DRAWS:
                raise TextDistillError(f"method 'unidetox': {c.lm} ended every sample at once in {EMPTY_DRAWS} "
                                       "draws in a row; raise alpha or check the LM's end token")
        scores = toxicity(texts)
        log.update({"lm": c.lm, "texts": len(texts), "empty_samples": empty,
                    "sample_seconds": round(time.perf_counter() - began, 1),
                    "mean_toxicity": round(sum(scores) / len(scores), 5),
                    "toxic_share": round(sum(s > 0.5 for s in scores) / len(scores), 5)})
        return self._artifact(task, seed, kind="text", texts=texts,
                              labels=torch.full((len(texts),), label, dtype=torch.long), log=log)
