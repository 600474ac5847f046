"""dm, distribution matching (Zhao & Bilen 2023) on token embeddings or frozen sentence vectors.

Per class, the mean representation (what the learner's head reads) of the synthetic examples is pulled to
that of a real batch, under a freshly initialised learner each step (for pretrained transformers the body
stays pretrained, so the space is fixed); optionally the MMD with a Gaussian kernel. With minilm-frozen the
representation is the frozen sentence vector itself: this is the first stage of LM-embedding-space
distillation (Tao et al. 2024). The labels play no part in the objective: soft labels come from a teacher
(the learner trained on the whole training split with its full-data recipe, as the full-data baseline is).

Differential privacy (``dp_epsilon``, kernel mean): each class's real mean is released by the Gaussian mechanism
(per-example clipped representations, Poisson-sampled at a public rate, noised from a secure source); the set
starts from noise and reads the private data through nothing else.

With ``text_space`` project, softmax or gumbel (``learned_set``, token learners) the matched representations are
those of real tokens and the set is written as their text; soft labels are the teacher's on that text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..data import Task
from ..errors import ConfigError
from ..distributed import gather_rows, shard
from ..privacy import DPOptions, SecureRandom, noisy_mean, publishable
from ..learners import Learner
from ..distilled import DistilledDataset
from ..progress import bar as progress_bar
from ..train import batch_of, train
from .base import Distiller, descend, fresh_model, real_batch, register_method, thin
from .learned_set import LearnedSetConfig, SyntheticSet, fresh_parameters, real_inputs


@dataclass
class DMConfig(LearnedSetConfig, DPOptions):
    labels: str = field(default="hard", metadata={"help": "hard, or soft (a teacher's predicted distribution)"})
    kernel: str = field(default="mean", metadata={"help": "mean (squared distance of class means) or mmd (Gaussian)"})
    bandwidth: float = field(default=0.0, metadata={"ge": 0, "help": "MMD kernel width (0: the median pairwise distance)"})
    iterations: int = field(default=1000, metadata={"ge": 1, "help": "matching steps (a fresh learner each)"})
    outer_lr: float = field(default=0.05, metadata={"gt": 0, "help": "Adam learning rate of the synthetic inputs"})
    real_batch: int = field(default=128, metadata={"ge": 1, "help": "real examples per class per step"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.labels == "unrestricted":
            raise ConfigError("dm does not learn labels: use hard or soft (a teacher's distribution)")
        if self.kernel not in ("mean", "mmd"):
            raise ConfigError(f"kernel must be mean or mmd, not {self.kernel!r}")
        if self.dp_epsilon:  # only the noisy class means may touch the private data
            for ok, what in ((self.init == "noise", "init real copies private examples: use --init noise"),
                             (self.labels == "hard", "soft labels come from a teacher trained on the private data"),
                             (self.kernel == "mean", "the MMD kernel has no clipped per-example mechanism here")):
                if not ok:
                    raise ConfigError(f"dm with dp_epsilon: {what}")


def mmd(a: torch.Tensor, b: torch.Tensor, bandwidth: float = 0.0) -> torch.Tensor:
    """Squared maximum mean discrepancy between two samples under a Gaussian kernel (biased estimate)."""
    both = torch.cat([a, b])
    d2 = torch.cdist(both, both).pow(2)
    if not bandwidth:
        bandwidth = float(d2.detach()[d2.detach() > 0].median().sqrt()) if (d2.detach() > 0).any() else 1.0
    k = torch.exp(-d2 / (2 * bandwidth**2))
    n = len(a)
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


def distribution_distance(syn: torch.Tensor, real: torch.Tensor, kernel: str, bandwidth: float = 0.0) -> torch.Tensor:
    if kernel == "mmd":
        return mmd(syn, real, bandwidth)
    return ((syn.mean(0) - real.mean(0)) ** 2).sum()


def teacher_labels(learner: Learner, task: Task, real: dict[str, torch.Tensor], real_y: torch.Tensor,
                   inputs: dict[str, torch.Tensor], device: str, seed: int) -> torch.Tensor:
    """Soft labels for synthetic inputs: the softmax of the learner trained on the whole training split with its
    full-data recipe (epochs over the split, not the few hundred steps of a small set's recipe)."""
    model = learner.build(task.num_classes, seed)
    params = train(learner, model, real, real_y, learner.full_data_recipe(len(real_y)), seed=seed, device=device)
    model.eval()
    with torch.no_grad():
        return learner.forward(model, params, {k: v.to(device) for k, v in inputs.items()}).softmax(-1).cpu()


@register_method
class DM(Distiller):
    name = "dm"
    description = "distribution matching of per-class representations (mean or MMD) under fresh learners"
    Config = DMConfig
    uses_device = True

    def run(self, task: Task, dpc: int, learner: Learner, seed: int = 0) -> DistilledDataset:
        cfg = self.config
        syn, rng = SyntheticSet.seeded(task, dpc, learner, cfg, seed, labels="hard", device=self.device)
        real, real_y, per_class = real_inputs(task, learner)
        opt = torch.optim.Adam(syn.param_groups(cfg.outer_lr))  # hard labels: the inputs only
        dp = self.dp_plan(task) if cfg.dp_epsilon else None
        secure = SecureRandom() if dp else None  # the mechanism's draws: never from the set's seed
        history = []
        bar = progress_bar(range(cfg.iterations), desc=f"dm {task.name} {dpc}/class", leave=False)
        for it in bar:
            syn.anneal(it, cfg.iterations)
            model = fresh_model(learner, task, seed, it, self.device).eval()
            params = fresh_parameters(model)
            loss = 0.0
            for c, rows in enumerate(per_class):
                if dp:  # Poisson sampling at the public rate, as the accountant assumes
                    idx = torch.from_numpy(secure.sample(rows, dp["sampling_rate"]))
                else:
                    idx = real_batch(rng, rows, cfg.real_batch)
                with torch.no_grad():  # each rank embeds its shard of the batch (all of it in one process)
                    mine = shard(idx)
                    real_emb = gather_rows(learner.embed(model, params, {k: v.to(self.device) for k, v in batch_of(
                        real, mine if len(mine) else idx[:1]).items()})[: len(mine)]) if len(idx) else None
                # a Poisson sample can be empty: the release is then noise alone
                syn_emb = learner.embed(model, params, syn.inputs(syn.rows_of(c)))
                if dp:
                    rows_emb = syn_emb.new_zeros((0, syn_emb.shape[-1])) if real_emb is None else real_emb
                    target = noisy_mean(rows_emb, cfg.dp_clip, dp["noise_multiplier"], dp["expected_batch"], secure)
                    loss = loss + ((syn_emb.mean(0) - target) ** 2).sum()
                else:
                    loss = loss + distribution_distance(syn_emb, real_emb, cfg.kernel, cfg.bandwidth)
            loss = loss / len(per_class)
            descend(self.name, opt, loss, it, history)
            bar.set_postfix(loss=f"{history[-1]:.4f}")
        labels = None
        if cfg.labels == "soft":
            labels = teacher_labels(learner, task, real, real_y, syn.held_inputs(), self.device, seed)
        ds = syn.artifact(self, task, seed, labels=labels, log={"matching_loss": thin(history)})
        return publishable(ds, task, dp) if dp else ds

    def dp_plan(self, task: Task) -> dict:
        """The mechanism and its accounting, from public sizes only (the task's size and classes)."""
        cfg = self.config
        return cfg.dp_plan("Gaussian on clipped per-class sums of representations", cfg.real_batch, task.num_classes,
                           len(task.train), cfg.iterations)
