"""attention-labels (Maekawa et al. 2023): bptt for transformer learners plus learned attention labels.

Each synthetic sentence also carries, per layer and head, a target attention distribution (for the CLS
row, or for every row). The inner loss is the task loss plus ``attention_weight`` x KL(attention labels ||
the model's attention) (``losses.AttentionLabelLoss``); the labels are learned with everything else through the
unrolled training. The set's recipe names that loss (``attention-kl``, with its weight), so that evaluation trains
the set as it was learned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..data import Task
from ..errors import ConfigError
from ..learners import AttentionLearner, Learner
from ..losses import AttentionLabelLoss
from .base import register_method
from .unroll import UnrollConfig, UnrolledDistiller


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
