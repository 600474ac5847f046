"""Unrolled training, shared by the methods that differentiate through a learner's training on their set: the inner
recipe (full-batch SGD with learned step sizes), ``unroll`` and the chunked ``real_loss`` after it (``bptt``,
``attention-labels``, ``learned-labels``), ``inverse_softplus`` for the step sizes (and ``mtt``'s), and the outer
loop of ``bptt`` and ``attention-labels`` (``UnrolledDistiller``, not registered: the methods subclass it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..data import Task
from ..errors import ConfigError
from ..learners import Learner, TokenLearner
from ..recipe import ATTENTION_KL
from ..distilled import DistilledDataset
from ..progress import bar as progress_bar
from ..recipe import Recipe
from ..train import Params, batch_of, train
from .base import Distiller, check_finite, fresh_model, real_batch, thin
from .learned_set import LearnedSetConfig, SyntheticSet, real_inputs


@dataclass
class UnrollConfig(LearnedSetConfig):
    """The options of a method that unrolls a learner's training on its set (``bptt``, ``attention-labels``)."""

    labels: str = field(default="soft", metadata={"help": "hard (fixed), soft (learned distribution) or "
                                                           "unrestricted (learned real vector)"})
    inner_steps: int = field(default=10, metadata={"help": "unrolled SGD steps T on the synthetic set"})
    truncate: int = field(default=0, metadata={"ge": 0, "help": "back-propagate through the last k inner steps only (0: all)"})
    outer_steps: int = field(default=300, metadata={"ge": 1, "help": "outer optimisation steps (one fresh learner each)"})
    outer_lr: float = field(default=0.01, metadata={"gt": 0, "help": "outer learning rate for embeddings and labels"})
    lr_lr: float = field(default=0.01, metadata={"gt": 0, "help": "outer learning rate for the (softplus) step sizes"})
    outer_optimizer: str = field(default="adam", metadata={"help": "adam or adamw"})
    clip: float = field(default=1.0, metadata={"ge": 0, "help": "clip the outer gradient norm (0: off)"})
    init_lr: float = field(default=0.1, metadata={"gt": 0, "help": "initial inner step size"})
    real_batch: int = field(default=128, metadata={"ge": 1, "help": "real examples per outer step"})
    chunk: int = field(default=64, metadata={"ge": 1, "help": "real examples per forward pass of the outer loss (memory)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.outer_optimizer not in ("adam", "adamw"):
            raise ConfigError(f"outer_optimizer must be adam or adamw, not {self.outer_optimizer!r}")
        if self.inner_steps < 1 or not 0 <= self.truncate <= self.inner_steps:
            raise ConfigError("need inner_steps >= 1 and 0 <= truncate <= inner_steps")


def inverse_softplus(x: float) -> float:
    return x + math.log(-math.expm1(-x))


def inner_recipe(n: int, steps: int, lr: float) -> Recipe:
    """Full-batch SGD with learned per-step rates and no dropout: how the set is trained, then and later."""
    return Recipe.sgd(steps, lr, n)


def unroll(learner: Learner, model: torch.nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor,
           lrs: torch.Tensor, truncate: int, seed: int, loss=None) -> Params:
    """Train ``model`` on the synthetic set with ``lrs``, keeping the graph through the last ``truncate`` steps
    (all when 0); ``loss``: the set's own training loss (e.g. attention labels)."""
    recipe = inner_recipe(labels.shape[0], len(lrs), float(lrs.detach().mean()))
    return train(learner, model, inputs, labels, recipe, seed=seed, lrs=lrs, loss=loss, differentiable=True,
                 truncate=truncate)


def real_loss(learner: Learner, model: torch.nn.Module, params: Params, inputs: dict[str, torch.Tensor],
              labels: torch.Tensor, chunk: int, backward: bool) -> float:
    """Loss of the trained learner on a real batch, in chunks; with ``backward`` each chunk back-propagates
    at once, so only one chunk's activations are alive beside the unrolled graph."""
    n, total = labels.shape[0], 0.0
    for start in range(0, n, chunk):
        idx = torch.arange(start, min(n, start + chunk))
        part = F.cross_entropy(learner.forward(model, params, batch_of(inputs, idx)), labels[idx]) * len(idx) / n
        if backward:
            part.backward(retain_graph=start + chunk < n)
        total += float(part.detach())
    return total


class UnrolledDistiller(Distiller):
    """The outer loop of the unrolling methods (``bptt``, and ``attention-labels`` through its hooks): each step
    trains a fresh learner on the set through ``unroll`` and moves the set down its loss on a real batch."""

    Config = UnrollConfig
    uses_device = True

    def extra_parameters(self, learner: Learner, task: Task, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """More learnable tensors (attention labels in the subclass), from the initial set's inputs."""
        return {}

    def attention_targets(self, extra: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor | None:
        return None

    def inner_loss(self, extra: dict[str, torch.Tensor], mask: torch.Tensor):
        """The set's own training loss in the inner loop (None: the task loss; attention labels add a term)."""
        return None

    def check_learner(self, learner: Learner) -> None:
        if not isinstance(learner, TokenLearner):
            raise ConfigError(f"{self.name} needs a learner with token embeddings (minilm, an HF encoder, "
                              f"textcnn-glove, bilstm-glove), not {learner.name!r}")

    # -- the outer loop ---------------------------------------------------------------------------
    def run(self, task: Task, dpc: int, learner: Learner, seed: int = 0) -> DistilledDataset:
        cfg = self.config
        self.check_learner(learner)
        syn, rng = SyntheticSet.seeded(task, dpc, learner, cfg, seed, device=self.device)
        mask = syn.fixed["attention_mask"]
        raw_lrs = torch.full((cfg.inner_steps,), inverse_softplus(cfg.init_lr), device=self.device, requires_grad=True)
        extra = {k: v.to(self.device).requires_grad_(True)
                 for k, v in self.extra_parameters(learner, task, syn.inputs(detach=True)).items()}
        if extra and cfg.text_space != "embeddings":
            raise ConfigError(f"{self.name} learns {', '.join(extra)} for its learner's token positions, which a "
                              f"text set does not keep: use text_space embeddings, not {cfg.text_space!r}")

        extra_group = [{"params": list(extra.values()), "lr": cfg.outer_lr}] if extra else []
        groups = [*syn.param_groups(cfg.outer_lr), *extra_group, {"params": [raw_lrs], "lr": cfg.lr_lr}]
        opt = (torch.optim.Adam if cfg.outer_optimizer == "adam" else torch.optim.AdamW)(groups)
        real, real_y, _ = real_inputs(task, learner)

        history = []
        bar = progress_bar(range(cfg.outer_steps), desc=f"{self.name} {task.name} {dpc}/class", leave=False)
        for step in bar:
            syn.anneal(step, cfg.outer_steps)
            model = fresh_model(learner, task, seed, step, self.device)
            opt.zero_grad()
            trained = unroll(learner, model, syn.inputs(), syn.labels(), F.softplus(raw_lrs), cfg.truncate, seed=step,
                             loss=self.inner_loss(extra, mask))
            idx = real_batch(rng, len(real_y), cfg.real_batch)
            batch = {k: v.to(self.device) for k, v in batch_of(real, idx).items()}
            loss = real_loss(learner, model, trained, batch, real_y[idx].to(self.device), cfg.chunk, backward=True)
            check_finite(self.name, loss, step)
            if cfg.clip:
                torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], cfg.clip)
            opt.step()
            history.append(loss)
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{float(F.softplus(raw_lrs.detach()).mean()):.4f}")

        lrs = F.softplus(raw_lrs).detach().cpu()
        attention = self.attention_targets(extra, mask)
        recipe = inner_recipe(len(syn.hard), cfg.inner_steps, float(lrs.mean())).to_dict()
        if attention is not None:  # evaluation trains the set with the loss it was learned with
            recipe.update(loss=ATTENTION_KL, loss_options={"weight": cfg.attention_weight})
        return syn.artifact(self, task, seed, lrs=lrs, recipe=recipe,
                            per_example={} if attention is None else {"attention_labels": attention.detach().cpu()},
                            log={"real_loss": thin(history)})
