"""dc, gradient matching (Zhao, Mopuri & Bilen 2021) on token embeddings or frozen sentence vectors.

Per class, the learner's gradient on a synthetic batch is pulled towards its gradient on a real batch
(layer-wise cosine distance, or squared error). Each outer loop starts a fresh learner; within it, matching
steps alternate with a few training steps of the learner on the (detached) synthetic set.

Differential privacy (``dp_epsilon``, init noise): each class's real gradient is released by the Gaussian
mechanism (per-example clipped gradients of the matched tensors, Poisson-sampled at a public rate, noised from a
secure source); the set starts from noise and reads the private data through nothing else.

With ``text_space`` project, softmax or gumbel (``learned_set``, token learners) the synthetic gradients are those of
real tokens' embeddings and the set is written as their text (a private run then needs ``vocabulary full``: the
training split's tokens are private too).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..data import Task
from ..errors import ConfigError
from ..learners import Learner
from ..distilled import DistilledDataset
from ..progress import bar as progress_bar
from ..recipe import Recipe
from ..privacy import DPOptions, SecureRandom, publishable
from ..train import Params, train
from .base import Distiller, descend, fresh_model, register_method, thin
from .learned_set import LearnedSetConfig, SyntheticSet, fresh_parameters, real_inputs
from .matching import class_gradients, class_real_gradient, gradient_distance, reached


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
        opt = torch.optim.Adam(syn.param_groups(cfg.outer_lr))
        net_recipe = Recipe.sgd(max(1, cfg.net_steps), cfg.net_lr, len(syn.hard))
        history = []
        bar = progress_bar(range(cfg.outer_loops), desc=f"dc {task.name} {dpc}/class", leave=False)
        for outer in bar:
            model = fresh_model(learner, task, seed, outer, self.device).eval()
            params = fresh_parameters(model)
            names = learner.head_parameter_names(model) if cfg.classifier_only else [
                k for k, v in model.named_parameters() if v.requires_grad]
            names = reached(learner, model, params, names, syn.inputs(detach=True), syn.labels(detach=True))
            for inner in range(cfg.inner_loops):
                syn.anneal(outer * cfg.inner_loops + inner, cfg.outer_loops * cfg.inner_loops)
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
