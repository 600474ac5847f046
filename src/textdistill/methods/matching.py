"""Gradient matching, shared by the methods that match gradients (``dc``, ``gradmm``, ``dilm``): the layer-wise
distance between two gradients, a loss's gradients over chosen tensors, the tensors a synthetic set reaches, and a
class's real gradient (a mean over a seeded batch, sharded under torchrun, or through the Gaussian mechanism)."""

from __future__ import annotations

import numpy as np
import torch

from ..distributed import shard, sum_across
from ..learners import Learner
from ..privacy import SecureRandom, noisy_mean
from ..train import Params, batch_of, loss_fn
from .base import real_batch


def gradient_distance(a: list[torch.Tensor | None], b: list[torch.Tensor | None], kind: str = "cos") -> torch.Tensor:
    """Sum over parameter tensors of the distance between two gradients; zero when they are equal.

    cos: each tensor is viewed as [output units, rest] and contributes sum(1 - cosine) over its rows; 1-D
    tensors (biases, LayerNorm) contribute 0, as in the reference (``distance_wb``).
    A tensor one side does not reach (word embeddings under inputs_embeds) is left out.
    """
    total = next(g for g in a if g is not None).new_zeros(())
    for ga, gb in zip(a, b):
        if ga is None or gb is None:
            continue
        if kind == "mse":
            total = total + ((ga - gb) ** 2).sum()
        elif ga.dim() > 1:
            ra, rb = ga.reshape(ga.shape[0], -1), gb.reshape(gb.shape[0], -1)
            cos = (ra * rb).sum(-1) / (ra.norm(dim=-1) * rb.norm(dim=-1) + 1e-8)
            total = total + (1 - cos).sum()
    return total


def class_gradients(learner: Learner, model: torch.nn.Module, params: Params, names: list[str],
                    inputs: dict[str, torch.Tensor], labels: torch.Tensor, create_graph: bool) -> list[torch.Tensor | None]:
    loss = loss_fn(learner.forward(model, params, inputs), labels)
    return list(torch.autograd.grad(loss, [params[k] for k in names], create_graph=create_graph, allow_unused=True))


def reached(learner: Learner, model: torch.nn.Module, params: Params, names: list[str],
            inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> list[str]:
    """The tensors of ``names`` that a loss on ``inputs`` (the synthetic set) reaches. Synthetic inputs are
    embeddings, so the word embedding table is not among them; matching skips a tensor one side lacks, so the
    real side need not compute it and, under DP, must not clip it: its norm would use up the clip of the rest."""
    grads = class_gradients(learner, model, params, names, inputs, labels, create_graph=False)
    return [k for k, g in zip(names, grads) if g is not None]


def real_gradient(learner: Learner, model: torch.nn.Module, params: Params, names: list[str],
                  real: dict[str, torch.Tensor], real_y: torch.Tensor, idx: torch.Tensor,
                  device: str) -> list[torch.Tensor | None]:
    """The mean loss gradient over the real rows ``idx`` (detached). Under torchrun each rank takes its shard of
    the rows and the weighted shard gradients are summed across ranks: the same mean, computed in parallel."""
    mine = shard(idx)
    weight = len(mine) / len(idx)
    if not len(mine):  # more ranks than rows: this rank adds nothing, through the same graph as the others
        mine = idx[:1]
    batch = {k: v.to(device) for k, v in batch_of(real, mine).items()}
    grads = class_gradients(learner, model, params, names, batch, real_y[mine].to(device), create_graph=False)
    return sum_across([None if g is None else g.detach() * weight for g in grads])


def private_real_gradient(learner: Learner, model: torch.nn.Module, params: Params, names: list[str],
                          real: dict[str, torch.Tensor], real_y: torch.Tensor, rows: np.ndarray, dp: dict,
                          secure: SecureRandom, device: str) -> list[torch.Tensor]:
    """A class's mean loss gradient under the Gaussian mechanism: a Poisson sample of its ``rows`` at the plan's
    (public) rate, each example's gradient over ``names`` clipped to the plan's norm, summed, noised, divided by
    the plan's expected batch. ``secure`` draws the sample and the noise."""
    idx = secure.sample(rows, dp["sampling_rate"])
    shapes = [params[k].shape for k in names]
    flat = [torch.cat([torch.zeros(s, device=device).flatten() if g is None else g.flatten() for g, s in zip(
        class_gradients(learner, model, params, names, {k: v[[i]].to(device) for k, v in real.items()},
                        real_y[[i]].to(device), False), shapes)]) for i in idx]
    rows_g = torch.stack(flat) if flat else torch.zeros(0, sum(s.numel() for s in shapes), device=device)
    mean = noisy_mean(rows_g, dp["clip"], dp["noise_multiplier"], dp["expected_batch"], secure)
    return [part.view(s) for part, s in zip(torch.split(mean, [s.numel() for s in shapes]), shapes)]


def class_real_gradient(learner: Learner, model: torch.nn.Module, params: Params, names: list[str],
                        real: dict[str, torch.Tensor], real_y: torch.Tensor, rows: np.ndarray, batch: int,
                        dp: dict | None, secure: SecureRandom | None, rng: np.random.Generator,
                        device: str) -> list[torch.Tensor | None]:
    """A class's real gradient for one matching step: the mean over a random batch of its ``rows`` (drawn from
    the seeded ``rng``), or with a DP plan, through the Gaussian mechanism (drawn from ``secure``; dc and gradmm)."""
    if dp:
        return private_real_gradient(learner, model, params, names, real, real_y, rows, dp, secure, device)
    return real_gradient(learner, model, params, names, real, real_y, real_batch(rng, rows, batch), device)
