"""The training losses a recipe names (``Recipe.loss``), and the loss hook of ``train()`` they give for a set.

``set_loss(ds, recipe)`` is what evaluation and the audit train a set with: the loss the recipe names, with the set's
example weights (its ``weights`` per-example tensor) when it has them; None where that is plain cross-entropy, so
``train()`` runs its own loss. The losses live beside the loop, not with the methods that make such sets: what
trains a set must not depend on the code that distilled it.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar

import torch
import torch.nn.functional as F

from .errors import ConfigError
from .recipe import ATTENTION_KL, CROSS_ENTROPY
from .train import LossHook, Params, loss_fn

if TYPE_CHECKING:
    from .distilled import DistilledDataset
    from .learners import AttentionLearner, Learner
    from .recipe import Recipe



def example_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``loss_fn`` per example [n]: cross-entropy against class ids or label distributions."""
    if not labels.dtype.is_floating_point:
        return F.cross_entropy(logits, labels.long(), reduction="none")
    return -(labels * F.log_softmax(logits, dim=-1)).sum(-1)


def weighted_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The mean of each example's loss times its weight. The soft cross-entropy is linear in its target, so this is
    ``loss_fn`` on label rows scaled by the weights: how sets of the second format carried their weights."""
    return (weights * example_losses(logits, labels)).mean()


def attention_kl(target: torch.Tensor, attentions: tuple[torch.Tensor, ...],
                 weights: torch.Tensor | None = None) -> torch.Tensor:
    """KL(attention labels || model attention), averaged over examples, layers and heads (each example's mean
    times its weight, with ``weights``).

    ``target`` is [n, layers, heads, L] (the CLS row) or [n, layers, heads, L, L] (all rows), already a
    distribution over the last dimension; ``attentions`` is the model's per-layer [n, heads, L, L]."""
    model = torch.stack(attentions, 1)  # [n, layers, heads, L, L]
    if target.dim() == 4:
        model = model[:, :, :, 0]
    # Batches are trimmed to their longest sequence: trim the target's keys, and its rows when it has them.
    length = model.shape[-1]
    target = target[..., :length] if target.dim() == 4 else target[..., :length, :length]
    kl = (target * (target.clamp_min(1e-12).log() - model.clamp_min(1e-12).log())).sum(-1)
    if weights is None:
        return kl.mean()
    return (weights * kl.flatten(1).mean(1)).mean()


@dataclass
class WeightedLoss:
    """The training loss of a set with example weights (``train(loss=...)``): each example's cross-entropy times
    its weight."""

    weights: torch.Tensor  # [n], one per example of the set
    # the plain forward: train() keeps its fast kernels (and bf16 autocast) for it, as for its own loss
    eager: ClassVar[bool] = False

    def __call__(self, learner: "Learner", model: torch.nn.Module, params: Params, batch: dict[str, torch.Tensor],
                 y: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        logits = learner.forward(model, params, batch)
        return weighted_loss(logits, y, self.weights.to(logits.device)[rows])


@dataclass
class AttentionLabelLoss:
    """The training loss of a set with attention labels (``train(loss=...)``): the task loss plus ``weight`` x
    KL(attention labels || the model's attention), each example's terms times its weight when the set has them."""

    labels: torch.Tensor  # one target per example: [n, layers, heads, L] (CLS row) or [n, layers, heads, L, L]
    weight: float
    example_weights: torch.Tensor | None = None
    eager: ClassVar[bool] = True  # the attention probabilities: what only eager attention returns

    def __call__(self, learner: "AttentionLearner", model: torch.nn.Module, params: Params,
                 batch: dict[str, torch.Tensor], y: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        logits, attentions = learner.forward(model, params, batch, attentions=True)
        # a loaded set keeps its tensors on the CPU; .to keeps the graph of unrolled callers
        target = self.labels.to(logits.device)[rows]
        if self.example_weights is None:
            return loss_fn(logits, y) + self.weight * attention_kl(target, attentions)
        w = self.example_weights.to(logits.device)[rows]
        return weighted_loss(logits, y, w) + self.weight * attention_kl(target, attentions, w)


@dataclass(frozen=True)
class Loss:
    """A training loss by name: its options (name: default; every option is a non-negative number) and how it
    builds the loss hook for a set (None: the loop's own cross-entropy)."""

    name: str
    help: str
    options: dict[str, float]
    build: Callable[["DistilledDataset | None", dict[str, float]], LossHook | None]


LOSSES: dict[str, Loss] = {}


def register_loss(loss: Loss) -> Loss:
    LOSSES[loss.name] = loss
    return loss


def get_loss(name: str) -> Loss:
    if name not in LOSSES:
        raise ConfigError(f"unknown recipe loss {name!r}; known: {', '.join(LOSSES)}")
    return LOSSES[name]


def _weights(ds: "DistilledDataset | None") -> torch.Tensor | None:
    return None if ds is None else ds.label_weights


def _cross_entropy(ds: "DistilledDataset | None", options: dict[str, float]) -> LossHook | None:
    weights = _weights(ds)
    return None if weights is None else WeightedLoss(weights)


def _attention_kl(ds: "DistilledDataset | None", options: dict[str, float]) -> LossHook:
    if ds is None or ds.attention_labels is None:
        what = "the full training split" if ds is None else f"this {ds.kind} set"
        raise ConfigError(f"recipe loss {ATTENTION_KL!r} trains on a set's attention labels, and {what} has none; "
                          f"use loss {CROSS_ENTROPY!r}")
    return AttentionLabelLoss(ds.attention_labels, options["weight"], _weights(ds))


register_loss(Loss(CROSS_ENTROPY, "cross-entropy against the labels, each example's times its weight when the set "
                                  "has weights", {}, _cross_entropy))
register_loss(Loss(ATTENTION_KL, "cross-entropy plus weight x KL(the set's attention labels || the model's "
                                 "attention)", {"weight": 1.0}, _attention_kl))


def loss_options(recipe: "Recipe") -> dict[str, float]:
    """The options of the recipe's loss: its defaults, then the recipe's own; unknown options and values that are
    not non-negative numbers are refused."""
    loss = get_loss(recipe.loss)
    unknown = sorted(set(recipe.loss_options) - set(loss.options))
    if unknown:
        raise ConfigError(f"recipe loss {loss.name!r} has no option(s) {unknown}; known: "
                          f"{sorted(loss.options) or 'none'}")
    options = {**loss.options, **recipe.loss_options}
    for key, value in options.items():
        if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
                or value < 0):
            raise ConfigError(f"recipe loss {loss.name!r} needs option {key} >= 0, a finite number; got {value!r}")
    return options


def set_loss(ds: "DistilledDataset | None", recipe: "Recipe") -> LossHook | None:
    """The ``train(loss=...)`` hook for training on ``ds`` (None: the full training split) with ``recipe``: the
    loss the recipe names, with the set's example weights; None where that is plain cross-entropy."""
    return get_loss(recipe.loss).build(ds, loss_options(recipe))
