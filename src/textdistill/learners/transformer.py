"""Fine-tuned transformer encoders (all-MiniLM-L6-v2 offline; any Hugging Face encoder id on a GPU)."""

from __future__ import annotations

import copy
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call

from ..errors import ResourceMissing
from ..progress import bar as progress_bar
from ..resources import model_revision, resolve_model
from ..recipe import Recipe
from ..seeds import check_seed, torch_rng_kept
from ..params import Params
from .base import AttentionLearner, Learner, register_learner
from .packed import PackedBert, packable


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' warnings (a new head's weights "not initialized": it is ours) and its and the hub's progress
    bars off inside the block only: the process's own settings come back after it."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    hub_bars_off = are_progress_bars_disabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()  # the hub's bars too
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        with warnings.catch_warnings():  # the hub warns at each call where HF_HUB_DISABLE_PROGRESS_BARS pins it
            warnings.simplefilter("ignore")
            if bars:
                logging.enable_progress_bar()  # the hub's bars too
            if hub_bars_off != are_progress_bars_disabled():
                (disable_progress_bars if hub_bars_off else enable_progress_bars)()


def has_sdpa(model: torch.nn.Module) -> bool:
    """Whether the architecture has an SDPA attention (transformers refuses the request where it has none)."""
    try:
        model.get_correct_attn_implementation("sdpa")
    except ValueError:
        return False
    return True


class TransformerLearner(AttentionLearner):
    """``AutoModelForSequenceClassification`` with a new seeded head, fully fine-tuned."""

    def __init__(self, model_id: str, max_length: int = 64) -> None:
        self.name = model_id
        self.max_length = max_length
        self._templates: dict[int, tuple[torch.nn.Module, list[str]]] = {}
        self._under_sdpa: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()  # models inside first_order

    @property
    def default_recipe(self) -> Recipe:
        # The DiLM evaluation protocol (200 steps, AdamW 1e-4, half warm-up, cosine), batch min(64, n).
        return Recipe(steps=200, lr=1e-4, warmup=0.5, schedule="cosine", weight_decay=0.01)

    # Full data: the Hugging Face Trainer's defaults (3 epochs, lr 5e-5, linear decay) with BERT's batch 32 and
    # 10% warm-up (Learner.full_data), not the 200-step protocol of small sets (under one epoch of SST-2).

    @cached_property
    def path(self) -> str:
        return resolve_model(self.name)

    @cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        try:
            with _quiet_transformers():
                return AutoTokenizer.from_pretrained(self.path)
        except OSError as e:
            raise ResourceMissing(f"cannot load tokenizer {self.name!r} ({e}); offline, use a local path or "
                                  "a named model such as 'minilm'") from None

    def _pretrained(self, num_labels: int) -> tuple[torch.nn.Module, list[str]]:
        """The pretrained model with a head for ``num_labels`` and the names of the new head's parameters."""
        key = num_labels
        if key not in self._templates:
            from transformers import AutoModelForSequenceClassification

            try:  # the new head's random init is thrown away (build draws it from its seed): not from the caller's
                with _quiet_transformers(), torch_rng_kept():
                    model, info = AutoModelForSequenceClassification.from_pretrained(
                        self.path, num_labels=num_labels, attn_implementation="eager", output_loading_info=True,
                        dtype=torch.float32)  # float32 even for checkpoints stored in half precision
            except OSError as e:
                raise ResourceMissing(f"cannot load model {self.name!r} ({e})") from None
            self._templates[key] = (model, list(info["missing_keys"]))
        return self._templates[key]

    def build(self, num_labels: int, seed: int) -> torch.nn.Module:
        """A copy of the pretrained model whose new head is initialised from ``seed`` (loaded from disk once)."""
        template, new = self._pretrained(num_labels)
        model = copy.deepcopy(template)
        std = getattr(model.config, "initializer_range", 0.02)
        gen = torch.Generator().manual_seed(check_seed(seed, "build"))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in new:
                    p.copy_(torch.randn(p.shape, generator=gen) * std if p.dim() > 1 else torch.zeros_like(p))
        return model

    def encode(self, texts: list[str], pairs: list[str] | None = None) -> dict[str, torch.Tensor]:
        texts, pairs = list(texts), None if pairs is None else list(pairs)
        enc = self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length, padding=True,
                             return_tensors="pt")
        out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if "token_type_ids" in enc:
            out["token_type_ids"] = enc["token_type_ids"]
        return out

    def forward(self, model: torch.nn.Module, params: Params, inputs: dict[str, torch.Tensor],
                attentions: bool = False):
        """Logits, or (logits, attention probabilities per layer) with ``attentions=True``. Under SDPA
        (``first_order``) a BERT-like model runs on real tokens only (``packed``: the same maths and dropout draws)."""
        if not attentions and model in self._under_sdpa and packable(model, inputs):
            return functional_call(PackedBert(model), {f"model.{k}": v for k, v in params.items()}, args=(),
                                   kwargs=inputs)
        out = functional_call(model, params, args=(), kwargs={**inputs, "output_attentions": attentions})
        return (out.logits, out.attentions) if attentions else out.logits

    @contextmanager
    def first_order(self, model: torch.nn.Module) -> Iterator[None]:
        """SDPA attention (same maths and dropout draws as eager). Models are built with eager attention, which
        unrolled methods need: SDPA's CPU kernels have no double backward and return no attention probabilities."""
        # nested: the outer context restores eager; an eager-only architecture (MPNet) stays as it is
        if model in self._under_sdpa or not has_sdpa(model):
            yield
            return
        model.set_attn_implementation("sdpa")
        self._under_sdpa.add(model)
        try:
            yield
        finally:
            self._under_sdpa.discard(model)
            model.set_attn_implementation("eager")

    def head(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.classifier  # BERT-like heads read the pooled first token; RoBERTa-like read every position

    def input_embeddings(self, model: torch.nn.Module, params: Params, input_ids: torch.Tensor) -> torch.Tensor:
        """Word embeddings of token ids (the space of a token-embedding synthetic set)."""
        name = next(k for k, v in model.named_parameters() if v is model.get_input_embeddings().weight)
        return torch.nn.functional.embedding(input_ids, params[name])

    def input_width(self) -> int | None:
        return int(self.build(2, 0).get_input_embeddings().weight.shape[1])  # without listing the vocabulary

    def vocabulary(self) -> tuple[list[str], torch.Tensor]:
        model = self.build(2, 0)
        ids = range(len(self.tokenizer))
        return self.tokenizer.convert_ids_to_tokens(list(ids)), model.get_input_embeddings().weight.detach()

    @property
    def pair_separator(self) -> str:  # type: ignore[override]
        return self.tokenizer.sep_token

    def detokenize(self, tokens: list[str]) -> str:
        special = set(self.tokenizer.all_special_tokens)
        return self.tokenizer.convert_tokens_to_string([t for t in tokens if t not in special]).strip()

    @torch.no_grad()
    def _sentence_vectors(self, texts: list[str], pairs: list[str] | None) -> np.ndarray:
        """Mean-pooled last hidden states of the pretrained encoder, L2-normalised (sentence-transformers style)."""
        from transformers import AutoModel

        # weights a checkpoint lacks (a pooler) get a random init, unused here: not drawn from the caller's stream
        with _quiet_transformers(), torch_rng_kept():
            encoder = AutoModel.from_pretrained(self.path, dtype=torch.float32).eval()
        out = []
        # a few hundred rows take seconds: no bar
        bar = progress_bar(range(0, len(texts), 128), desc=f"encode {len(texts)} texts ({self.name})",
                           unit="batch", leave=False, disable=len(texts) <= 256)
        for start in bar:
            batch = self.encode(texts[start : start + 128], None if pairs is None else pairs[start : start + 128])
            hidden = encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
        return torch.cat(out).numpy()

    def describe(self) -> dict:
        return {**super().describe(), "revision": model_revision(self.name),
                "tokenizer": type(self.tokenizer).__name__}


@register_learner("minilm", "all-MiniLM-L6-v2 with a new head, fully fine-tuned (CPU default)")
def _minilm() -> Learner:
    return TransformerLearner("minilm")


@register_learner("mpnet", "all-mpnet-base-v2 with a new head, fully fine-tuned (110M; fetched on first use)")
def _mpnet() -> Learner:
    return TransformerLearner("mpnet")


class DecoderLearner(TransformerLearner):
    """A causal LM as a sequence classifier: a new seeded head reads the last non-padding token (Hugging Face's
    ``*ForSequenceClassification``). Fully fine-tuned, or (``lora_rank > 0``) frozen with LoRA adapters on the
    attention projections through ``peft``, the head trained in full."""

    def __init__(self, model_id: str, max_length: int = 64, lora_rank: int = 0) -> None:
        super().__init__(model_id, max_length)
        self.lora_rank = lora_rank

    def build(self, num_labels: int, seed: int) -> torch.nn.Module:
        model = super().build(num_labels, seed)
        model.config.pad_token_id = self.tokenizer.pad_token_id  # where the head finds the last real token
        if not self.lora_rank:
            return model
        from peft import LoraConfig, get_peft_model

        with torch.random.fork_rng():  # the adapters' random init, from the seed and nothing else
            torch.manual_seed(seed)
            model = get_peft_model(model, LoraConfig(r=self.lora_rank, lora_alpha=2 * self.lora_rank,
                                                     target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
        for p in self.head(model).parameters():
            p.requires_grad_(True)
        return model

    @cached_property
    def tokenizer(self):
        tok = super().tokenizer
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        tok.padding_side = "right"  # the head reads the last non-padding token
        return tok

    def encode(self, texts: list[str], pairs: list[str] | None = None) -> dict[str, torch.Tensor]:
        # a decoder has no segment token: the two texts of a pair go on two lines
        joined = list(texts) if pairs is None else [f"{a}{self.pair_separator}{b}" for a, b in zip(texts, pairs)]
        return super().encode(joined)

    pair_separator = "\n"

    def head(self, model: torch.nn.Module) -> torch.nn.Module:
        return next(m for name, m in model.named_modules() if name.split(".")[-1] == "score")

    def describe(self) -> dict:
        return {**super().describe(), "lora_rank": self.lora_rank}


@register_learner("smollm2-135m", "SmolLM2-135M-Instruct (decoder) as a sequence classifier, fully fine-tuned")
def _smollm2() -> Learner:
    return DecoderLearner("smollm2-135m")


@register_learner("smollm2-135m-lora", "SmolLM2-135M-Instruct as a sequence classifier, LoRA rank 8 and the head")
def _smollm2_lora() -> Learner:
    return DecoderLearner("smollm2-135m", lora_rank=8)


def learner_for(name: str) -> TransformerLearner:
    """A model id or folder as a learner: a causal LM (``*ForCausalLM`` in its config) as a decoder classifier,
    anything else (or a config that cannot be read now: the model's own load reports it) as an encoder."""
    import json

    from transformers.utils import cached_file

    try:
        config = json.loads(Path(cached_file(resolve_model(name), "config.json")).read_text())
    except (OSError, ValueError):
        config = {}
    causal = any(a.endswith("ForCausalLM") for a in config.get("architectures") or [])
    return DecoderLearner(name) if causal else TransformerLearner(name)
