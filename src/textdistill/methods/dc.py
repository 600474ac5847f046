"""dc, gradient matching (Zhao, Mopuri & Bilen 2021) on token embeddings or frozen sentence vectors.

Per class, the learner's gradient on a synthetic batch is pulled towards its gradient on a real batch
(layer-wise cosine distance, or squared error). Each outer loop starts a fresh learner; within it, matching
steps alternate with a few training steps of the learner on the (detached) synthetic set.

Differential privacy (``dp_epsilon``, init noise): each class's real gradient is released by the Gaussian
mechanism (per-example clipped gradients of the matched tensors, Poisson-sampled at a public rate, noised from a
secure source); the set starts from noise and reads the private data through nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import Task
from ..distributed import shard, sum_across
from ..errors import ConfigError
from ..learners import Learner
from ..distilled import DistilledDataset
from ..recipe import Recipe
from ..privacy import DPOptions, SecureRandom, noisy_mean, publishable
from ..train import Params, batch_of, loss_fn, train
from .base import Distiller, descend, fresh_model, real_batch, register_method, thin
from .learned_set import LearnedSetConfig, SyntheticSet, fresh_parameters, real_inputs


@dataclass
class DCConfig(LearnedSetConfig, DPOptions):
    distance: str = field(default="cos", metadata={"help": "cos (layer-wise 1 - cosine) or mse"})
    classifier_only: bool = field(default=False, metadata={"help": "match only the head's gradients (as DiLM)"})
    outer_loops: int = field(default=100, metadata={"ge": 1, "help": "fresh learner initialisations"})
    inner_loops: int = field(default=10, metadata={"ge": 1, "help": "matching steps per initialisation"})
    net_steps: int = field(default=1, metadata={"ge": 0, "help": "learner training steps on the set after each match"})
    net_lr: float = field(default=0.01, metadata={"gt": 0, "help": "SGD step size of those training steps"})
    outer_lr: float = field(default=0.01, metadata={"gt": 0, "help": "Adam learning rate of the synthetic inputs and labels"})
    real_batch: int = field(default=64, metadata={"ge": 1, "help": "real examples per class per matching step"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.distance not in ("cos", "mse"):
            raise ConfigError(f"distance must be cos or mse, not {self.distance!r}")
        if self.dp_epsilon and self.init != "noise":  # only the clipped, noised real gradients may read the data
            raise ConfigError("dc with dp_epsilon: init real copies private examples: use --init noise")


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


@register_method
class DC(Distiller):
    name = "dc"
    description = "gradient matching per class (token embeddings or frozen sentence vectors)"
    Config = DCConfig
    uses_device = True

    def matching_loss(self, learner: Learner, model: torch.nn.Module, params: Params, names: list[str],
                      syn: SyntheticSet, real: dict[str, torch.Tensor], real_y: torch.Tensor,
                      per_class: list[np.ndarray], rng: np.random.Generator, dp: dict | None = None,
                      secure: SecureRandom | None = None) -> torch.Tensor:
        """The mean over classes of the distance between synthetic and real gradients (with ``dp``, the real ones
        through the Gaussian mechanism)."""
        cfg, total = self.config, 0.0
        labels = syn.labels()
        for c, rows in enumerate(per_class):
            g_real = class_real_gradient(learner, model, params, names, real, real_y, rows, cfg.real_batch, dp,
                                         secure, rng, self.device)
            own = syn.rows_of(c)
            g_syn = class_gradients(learner, model, params, names, syn.inputs(own), labels[own], create_graph=True)
            total = total + gradient_distance(g_syn, g_real, cfg.distance)
        return total / len(per_class)

    def run(self, task: Task, dpc: int, learner: Learner, seed: int = 0) -> DistilledDataset:
        cfg = self.config
        syn, rng = SyntheticSet.seeded(task, dpc, learner, cfg, seed, device=self.device)
        real, real_y, per_class = real_inputs(task, learner)
        dp = self.dp_plan(task) if cfg.dp_epsilon else None
        secure = SecureRandom() if dp else None  # the mechanism's draws: never from the set's seed
        opt = torch.optim.Adam(syn.parameters(), lr=cfg.outer_lr)
        net_recipe = Recipe.sgd(max(1, cfg.net_steps), cfg.net_lr, len(syn.hard))
        history = []
        bar = tqdm(range(cfg.outer_loops), desc=f"dc {task.name} {dpc}/class", leave=False)
        for outer in bar:
            model = fresh_model(learner, task, seed, outer, self.device).eval()
            params = fresh_parameters(model)
            names = learner.head_parameter_names(model) if cfg.classifier_only else [
                k for k, v in model.named_parameters() if v.requires_grad]
            names = reached(learner, model, params, names, syn.inputs(detach=True), syn.labels(detach=True))
            for inner in range(cfg.inner_loops):
                loss = self.matching_loss(learner, model, params, names, syn, real, real_y, per_class, rng, dp, secure)
                descend(self.name, opt, loss, outer, history)
                if cfg.net_steps and inner < cfg.inner_loops - 1:
                    params = train(learner, model, syn.inputs(detach=True), syn.labels(detach=True), net_recipe,
                                   seed=outer, params=params, device=self.device)
            bar.set_postfix(loss=f"{history[-1]:.3f}")
        ds = syn.artifact(self, task, seed, log={"matching_loss": thin(history)})
        return publishable(ds, task, dp) if dp else ds

    def dp_plan(self, task: Task) -> dict:
        """The mechanism and its accounting, from public sizes only (the task's size and classes)."""
        cfg = self.config
        return cfg.dp_plan("Gaussian on clipped per-example loss gradients", cfg.real_batch, task.num_classes,
                           len(task.train), cfg.outer_loops * cfg.inner_loops)
