"""attention-labels (Maekawa et al. 2023): bptt for transformer learners plus learned attention labels.

Each synthetic sentence also carries, per layer and head, a target attention distribution (for the CLS
row, or for every row). The inner loss is the task loss plus ``attention_weight`` x KL(attention labels ||
the model's attention); the labels are learned with everything else through the unrolled training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..data import Task
from ..errors import ConfigError
from ..learners import AttentionLearner, Learner
from ..train import Params, loss_fn
from .base import register_method
from .unroll import UnrollConfig, UnrolledDistiller


def attention_kl(target: torch.Tensor, attentions: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """KL(attention labels || model attention), averaged over examples, layers and heads.

    ``target`` is [n, layers, heads, L] (the CLS row) or [n, layers, heads, L, L] (all rows), already a
    distribution over the last dimension; ``attentions`` is the model's per-layer [n, heads, L, L]."""
    model = torch.stack(attentions, 1)  # [n, layers, heads, L, L]
    if target.dim() == 4:
        model = model[:, :, :, 0]
    # Batches are trimmed to their longest sequence: trim the target's keys, and its rows when it has them.
    length = model.shape[-1]
    target = target[..., :length] if target.dim() == 4 else target[..., :length, :length]
    kl = (target * (target.clamp_min(1e-12).log() - model.clamp_min(1e-12).log())).sum(-1)
    return kl.mean()


@dataclass
class AttentionLabelLoss:
    """The training loss of a set with attention labels (``train(loss=...)``): the task loss plus ``weight`` x
    KL(attention labels || the model's attention)."""

    labels: torch.Tensor  # one target per example: [n, layers, heads, L] (CLS row) or [n, layers, heads, L, L]
    weight: float

    def __call__(self, learner: AttentionLearner, model: torch.nn.Module, params: Params,
                 batch: dict[str, torch.Tensor], y: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        logits, attentions = learner.forward(model, params, batch, attentions=True)
        # a loaded set keeps its labels on the CPU; .to keeps the graph of unrolled callers
        return loss_fn(logits, y) + self.weight * attention_kl(self.labels.to(logits.device)[rows], attentions)


def set_loss(ds, recipe) -> AttentionLabelLoss | None:
    """The training loss a set asks for: its attention labels' term, when it carries attention labels."""
    return None if ds is None or ds.attention_labels is None else AttentionLabelLoss(ds.attention_labels,
                                                                                     recipe.attention_weight)


@dataclass
class AttentionLabelsConfig(UnrollConfig):
    attention_rows: str = field(default="cls", metadata={"help": "cls (the first row) or all rows"})
    attention_weight: float = field(default=1.0, metadata={"ge": 0, "help": "lambda: weight of the attention KL term"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.attention_rows not in ("cls", "all"):
            raise ConfigError(f"attention_rows must be cls or all, not {self.attention_rows!r}")


@register_method
class AttentionLabels(UnrolledDistiller):
    name = "attention-labels"
    description = "bptt plus learned per-layer, per-head attention labels (transformer learners)"
    Config = AttentionLabelsConfig

    def check_learner(self, learner: Learner) -> None:
        if not isinstance(learner, AttentionLearner):
            raise ConfigError(f"attention-labels needs a learner that returns its attention (minilm, an HF "
                              f"transformer), not {learner.name!r}")

    def extra_parameters(self, learner: Learner, task: Task, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Attention-label logits, initialised from the pretrained model's own attention on the initial set (its
        token types included, for pairs)."""
        model = learner.build(task.num_classes, seed=0).to(inputs["inputs_embeds"].device).eval()
        with torch.no_grad():
            _, attentions = learner.forward(model, dict(model.named_parameters()), inputs, attentions=True)
            att = torch.stack(attentions, 1)  # [n, layers, heads, L, L]
            if self.config.attention_rows == "cls":
                att = att[:, :, :, 0]
        return {"attention_logits": att.clamp_min(1e-6).log()}

    def attention_targets(self, extra: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor | None:
        logits = extra["attention_logits"]
        keep = mask.bool()[:, None, None, :] if logits.dim() == 4 else mask.bool()[:, None, None, None, :]
        return logits.masked_fill(~keep, -1e4).softmax(-1)

    def inner_loss(self, extra: dict[str, torch.Tensor], mask: torch.Tensor) -> AttentionLabelLoss:
        return AttentionLabelLoss(self.attention_targets(extra, mask), self.config.attention_weight)
