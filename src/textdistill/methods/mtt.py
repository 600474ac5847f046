"""mtt, trajectory matching (Cazenavette et al. 2022) on token embeddings or frozen sentence vectors.

A buffer step trains expert learners on the real data with SGD and saves their parameters after every epoch
(one file per expert in the cache, so an interrupted buffer resumes with the experts it lacks). Each
distillation step starts a student at a random expert epoch, trains it S steps on the synthetic set with a
learnable step size, and pulls its parameters towards the expert's M epochs later (squared distance
normalised by how far the expert itself moved).

With ``text_space`` project, softmax or gumbel (``learned_set``, token learners) the student trains on real tokens'
embeddings and the set is written as their text, which any learner trains on with its own recipe (the learned step
size stays in the log).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..atomic import atomic_write
from ..cache import build_lock, in_use, key_of
from ..data import Task
from ..distributed import barrier, deal
from ..errors import ConfigError
from ..learners import Learner
from ..progress import bar as progress_bar
from ..resources import cache_dir
from ..distilled import DistilledDataset
from ..recipe import Recipe
from ..train import train
from .base import Distiller, descend, register_method, thin
from .learned_set import LearnedSetConfig, SyntheticSet, real_inputs
from .trajectory import epoch_params, trajectory_loss
from .unroll import inverse_softplus


@dataclass
class MTTConfig(LearnedSetConfig):
    experts: int = field(default=5, metadata={"ge": 1, "help": "expert trajectories in the buffer"})
    expert_epochs: int = field(default=5, metadata={"ge": 1, "help": "epochs each expert trains on the real data"})
    expert_lr: float = field(default=0.01, metadata={"gt": 0, "help": "the experts' SGD step size"})
    expert_batch: int = field(default=64, metadata={"ge": 1, "help": "the experts' batch size"})
    max_start_epoch: int = field(default=3, metadata={"help": "students start at an expert epoch below this"})
    match_epochs: int = field(default=2, metadata={"ge": 1, "help": "M: match the expert this many epochs later"})
    syn_steps: int = field(default=20, metadata={"ge": 1, "help": "S: student steps on the synthetic set"})
    syn_batch: int = field(default=0, metadata={"ge": 0, "help": "synthetic examples per student step (0: all)"})
    iterations: int = field(default=500, metadata={"ge": 1, "help": "distillation steps"})
    outer_lr: float = field(default=0.01, metadata={"gt": 0, "help": "Adam learning rate of the synthetic inputs and labels"})
    init_lr: float = field(default=0.0, metadata={"ge": 0, "help": "initial student step size, learned (0: the experts')"})
    lr_lr: float = field(default=1e-4, metadata={"gt": 0, "help": "Adam learning rate of the (softplus) step size"})
    eval_steps: int = field(default=300, metadata={"ge": 1, "help": "SGD steps a learner takes on the finished set"})
    buffer_dir: str = field(default="", metadata={"help": "where expert trajectories live (default: the cache)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_start_epoch < 1 or self.max_start_epoch + self.match_epochs > self.expert_epochs:
            raise ConfigError("need 1 <= max_start_epoch and max_start_epoch + match_epochs <= expert_epochs")


def expert_recipe(cfg: MTTConfig, n: int) -> Recipe:
    """Plain SGD at a constant step size, one epoch per call: trajectories that a student can follow. Dropout
    is off, as for the students (and the reference's matching): a trajectory trained with it is not one the
    student's dropout-free steps can follow."""
    return Recipe.sgd(math.ceil(n / cfg.expert_batch), cfg.expert_lr, cfg.expert_batch)


def buffer(task: Task, learner: Learner, cfg: MTTConfig, progress: bool = True, device: str = "cpu") -> list[Path]:
    """Expert trajectories (trainable parameters after each epoch, epoch 0 = the init), trained if missing."""
    real, real_y, _ = real_inputs(task, learner)
    recipe = expert_recipe(cfg, len(real_y))
    key = key_of(task.fingerprint, learner.describe(), recipe.to_dict(), cfg.expert_epochs)
    root = Path(cfg.buffer_dir) if cfg.buffer_dir else cache_dir() / "trajectories"
    folder = root / f"{task.name}-{learner.name.replace('/', '_')}-{key}"
    paths = [folder / f"expert-{i}.safetensors" for i in range(cfg.experts)]
    mine = set(deal(len(paths)))  # under torchrun each rank trains every N-th expert (the buffer folder must be shared)
    for i, path in enumerate(progress_bar(paths, desc="mtt experts", leave=False, disable=not progress)):
        if i not in mine:
            continue
        with build_lock(path):  # parallel runs share experts instead of training them twice
            if not path.exists():
                train_expert(task, learner, real, real_y, recipe, cfg, i, path, progress, device)
    barrier()
    return paths


def train_expert(task: Task, learner: Learner, real: dict[str, torch.Tensor], real_y: torch.Tensor, recipe: Recipe,
                 cfg: MTTConfig, i: int, path: Path, progress: bool = False, device: str = "cpu") -> None:
    """One expert: SGD epochs on the real data, its trainable parameters saved after each, written at the end."""
    model = learner.build(task.num_classes, seed=10_000 + i)
    trainable = [k for k, v in model.named_parameters() if v.requires_grad]
    params = dict(model.named_parameters())
    snapshots = {f"0/{k}": params[k].detach().clone() for k in trainable}
    epochs = progress_bar(range(1, cfg.expert_epochs + 1), desc=f"expert {i + 1}/{cfg.experts}", unit="epoch",
                          leave=False, disable=not progress)
    for epoch in epochs:
        params = train(learner, model, real, real_y, recipe, seed=10_000 * i + epoch, params=params,
                       device=device, progress=progress)
        snapshots.update({f"{epoch}/{k}": params[k].detach().cpu().clone() for k in trainable})
    atomic_write(path, lambda p: save_file({k: v.contiguous() for k, v in snapshots.items()}, str(p)))


@register_method
class MTT(Distiller):
    name = "mtt"
    description = "trajectory matching against expert learners trained on the real data"
    Config = MTTConfig
    uses_device = True

    def run(self, task: Task, dpc: int, learner: Learner, seed: int = 0) -> DistilledDataset:
        cfg = self.config
        syn, rng = SyntheticSet.seeded(task, dpc, learner, cfg, seed, device=self.device)
        with in_use("trajectories"):  # a `cache clear` meanwhile keeps the experts this run trains and reads
            paths = buffer(task, learner, cfg, device=self.device)
            trajectories = [load_file(str(p), device=self.device) for p in paths]
        # As in the MTT paper, the student starts with the experts' step size. (Scaling it up to cover the
        # experts' M epochs in S steps overshot by 10x and more: a few synthetic examples give consistent
        # gradients, real mini-batches partly cancel.)
        init_lr = cfg.init_lr or cfg.expert_lr
        raw_lr = torch.tensor(inverse_softplus(init_lr), device=self.device, requires_grad=True)
        opt = torch.optim.Adam([*syn.param_groups(cfg.outer_lr), {"params": [raw_lr], "lr": cfg.lr_lr}])
        n = len(syn.hard)
        student_recipe = Recipe.sgd(cfg.syn_steps, init_lr, cfg.syn_batch or n)
        model = learner.build(task.num_classes, seed=0).to(self.device)
        history = []
        bar = progress_bar(range(cfg.iterations), desc=f"mtt {task.name} {dpc}/class", leave=False)
        for it in bar:
            syn.anneal(it, cfg.iterations)
            trajectory = trajectories[int(rng.integers(len(trajectories)))]
            epoch = int(rng.integers(cfg.max_start_epoch))
            start = epoch_params(trajectory, epoch)
            target = epoch_params(trajectory, epoch + cfg.match_epochs)
            student = train(learner, model, syn.inputs(), syn.labels(), student_recipe, seed=it,
                            lrs=F.softplus(raw_lr).expand(cfg.syn_steps),
                            params={k: v.clone().requires_grad_(True) for k, v in start.items()},
                            differentiable=True, device=self.device)
            loss = trajectory_loss(student, start, target)
            descend(self.name, opt, loss, it, history)
            bar.set_postfix(loss=f"{history[-1]:.4f}", lr=f"{float(F.softplus(raw_lr.detach())):.4f}")
        lr = float(F.softplus(raw_lr.detach()))
        recipe = Recipe.sgd(cfg.eval_steps, lr, cfg.syn_batch or n)
        return syn.artifact(self, task, seed, recipe=recipe.to_dict(),
                            log={"trajectory_loss": thin(history), "learned_lr": lr, "buffer": str(paths[0].parent)})
