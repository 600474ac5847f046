"""A trained inversion model (vec2text-style): a causal LM reads a sentence vector as a few prefix embeddings and
writes the sentence back.

A small MLP maps the vector to ``prefix`` input embeddings of the LM; the LM is trained with it, through LoRA
adapters on its attention projections (``peft``), or in full with ``lora_rank: 0`` (as vec2text does). It is trained on a task's training
sentences to reconstruct each from its own vector (next-token loss), checkpointed as it goes (a killed training
resumes where it stopped) and cached by what fixes it: task content, encoder, LM and settings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import atomic_write
from ..cache import build_lock, in_use, key_of
from ..progress import bar as progress_bar
from ..resources import cache_dir, check_model, model_revision, resolve_model
from ..seeds import torch_rng_kept


@dataclass(frozen=True)
class InverterSettings:
    lm: str = "smollm2-135m"
    prefix: int = 4  # input embeddings the vector becomes
    lora_rank: int = 8  # 0: the whole LM is trained
    steps: int = 400
    batch: int = 8
    lr: float = 1e-3
    max_tokens: int = 24  # of each training sentence
    seed: int = 0
    checkpoint_every: int = 50  # steps between the checkpoints a killed training resumes from


class Inverter(torch.nn.Module):
    def __init__(self, dim: int, settings: InverterSettings) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        super().__init__()
        path = resolve_model(settings.lm)
        check_model(path)
        self.settings = settings
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        with torch.random.fork_rng():
            torch.manual_seed(settings.seed)
            if settings.lora_rank:  # get_peft_model freezes everything but the adapters
                from peft import LoraConfig, get_peft_model

                lm = get_peft_model(lm, LoraConfig(r=settings.lora_rank, lora_alpha=2 * settings.lora_rank,
                                                   target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
            h = lm.config.hidden_size
            self.project = torch.nn.Sequential(torch.nn.Linear(dim, h), torch.nn.GELU(),
                                               torch.nn.Linear(h, settings.prefix * h))
        self.lm = lm
        eos = self.tokenizer.eos_token_id
        self.eos = eos if eos is not None else lm.config.eos_token_id  # tokenizers without one: the model's

    def trainable(self) -> dict[str, torch.Tensor]:
        return {k: p for k, p in self.named_parameters() if p.requires_grad}

    def prefix(self, vectors: torch.Tensor) -> torch.Tensor:
        """[n, prefix, hidden] input embeddings for unit sentence vectors [n, dim]."""
        return self.project(vectors).view(len(vectors), self.settings.prefix, -1)

    def loss(self, vectors: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Mean next-token loss of ``texts`` (each ended by EOS) read after their vectors' prefixes."""
        rows = [self.tokenizer(t, add_special_tokens=False)["input_ids"][: self.settings.max_tokens] + [self.eos]
                for t in texts]
        width = max(map(len, rows))
        ids = torch.tensor([r + [self.eos] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        k = self.settings.prefix
        embeds = torch.cat([self.prefix(vectors), self.lm.get_input_embeddings()(ids)], 1)
        full_mask = torch.cat([torch.ones(len(rows), k, dtype=mask.dtype), mask], 1)
        logits = self.lm(inputs_embeds=embeds, attention_mask=full_mask).logits[:, k - 1:-1]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids.reshape(-1), reduction="none")[
            mask.reshape(-1).bool()].mean()

    @torch.no_grad()
    def write(self, vectors: torch.Tensor, n: int, max_new_tokens: int, seed: int) -> list[list[str]]:
        """Per vector: its greedy sentence and ``n - 1`` sampled ones (torch's global random state is left as it
        was)."""
        from . import SAMPLING

        out = []
        for v in vectors:
            embeds = self.prefix(v[None])
            mask = torch.ones(1, self.settings.prefix, dtype=torch.long)
            common = {"inputs_embeds": embeds, "attention_mask": mask, "max_new_tokens": max_new_tokens,
                      "pad_token_id": self.eos, "eos_token_id": self.eos}
            ids = [self.lm.generate(**common, do_sample=False)]
            if n > 1:
                with torch_rng_kept(self.lm.device):
                    torch.manual_seed(seed)
                    ids.append(self.lm.generate(**common, do_sample=True, **SAMPLING, num_return_sequences=n - 1))
            texts = [t.strip() for g in ids for t in self.tokenizer.batch_decode(g, skip_special_tokens=True)]
            out.append(texts)
        return out


def train_inverter(vectors: np.ndarray, texts: list[str], settings: InverterSettings, key: str) -> Inverter:
    """The inverter for (``vectors``, ``texts``): loaded from the cache under ``key``, or trained (resuming from
    its last checkpoint) and cached. ``vectors`` are unit sentence vectors of ``texts``."""
    from safetensors.torch import load_file

    inv = Inverter(vectors.shape[1], settings)
    folder = cache_dir() / "inverters"
    done = folder / f"{key}.safetensors"
    with in_use("inverters"):  # a `cache clear` meanwhile keeps what this run trains and reads
        with build_lock(done):  # parallel runs wait for one training, not two
            if not done.exists():
                _train(inv, vectors, texts, settings, done, folder / f"{key}.partial.pt")
        inv.load_state_dict(load_file(str(done)), strict=False)
    return inv.eval()


def _train(inv: Inverter, vectors: np.ndarray, texts: list[str], settings: InverterSettings, done: Path,
           partial: Path) -> None:
    from safetensors.torch import save_file

    params = inv.trainable()
    opt = torch.optim.AdamW(params.values(), lr=settings.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / (0.05 * settings.steps + 1)))
    start = 0
    if partial.exists():  # a killed training resumes where it stopped
        state = torch.load(partial, weights_only=True)
        inv.load_state_dict(state["params"], strict=False)
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start = state["step"]
    # the whole batch order is fixed by the seed up front, so a resumed run sees the batches it would have seen
    rng = np.random.default_rng(settings.seed)
    epochs = -(-settings.steps * settings.batch // len(texts))
    order = np.concatenate([rng.permutation(len(texts)) for _ in range(max(1, epochs))])
    x = torch.from_numpy(vectors).float()
    inv.train()
    bar = progress_bar(range(start, settings.steps), desc="train inverter", initial=start, total=settings.steps)
    for step in bar:
        idx = order[step * settings.batch: (step + 1) * settings.batch]
        loss = inv.loss(x[idx], [texts[i] for i in idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % settings.checkpoint_every == 0 and step + 1 < settings.steps:
            state = {"params": {k: p.detach().clone() for k, p in params.items()}, "opt": opt.state_dict(),
                     "sched": sched.state_dict(), "step": step + 1}
            atomic_write(partial, lambda p: torch.save(state, p))
    weights = {k: p.detach().clone().contiguous() for k, p in params.items()}
    atomic_write(done, lambda p: save_file(weights, str(p)))
    partial.unlink(missing_ok=True)


def inverter_key(task_fingerprint: str, encoder: dict, settings: InverterSettings) -> str:
    fixed = {k: v for k, v in asdict(settings).items() if k != "checkpoint_every"}  # how often it saves changes nothing
    return key_of("inverter", task_fingerprint, encoder, fixed, model_revision(settings.lm))
