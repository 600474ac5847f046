"""The learnable synthetic set shared by bptt, dc, dm and mtt: inputs in a learner's own space and labels.

Two spaces: token embeddings [n, length, dim] for learners that read tokens (minilm, HF encoders, the GloVe
models; the set is bound to that learner), and sentence vectors [n, dim] for learners on frozen features
(minilm-frozen).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..data import Task
from ..errors import ConfigError
from ..learners import FeatureLearner, Learner, TokenLearner
from ..distilled import DistilledDataset
from .base import MethodConfig, class_indices

LABELS = ("hard", "soft", "unrestricted")


def check_labels_and_init(labels: str, init: str) -> None:
    """Config-time checks of the two options every learned-set method shares."""
    if labels not in LABELS:
        raise ConfigError(f"labels must be one of {', '.join(LABELS)}, not {labels!r}")
    if init not in ("real", "noise"):
        raise ConfigError(f"init must be real or noise, not {init!r}")


@dataclass
class LearnedSetConfig(MethodConfig):
    """The options of every method that learns a SyntheticSet."""

    labels: str = field(default="hard", metadata={"help": "hard, soft (learned distribution) or unrestricted"})
    init: str = field(default="real", metadata={"help": "real (random real examples) or noise"})
    length: int = field(default=32, metadata={"ge": 1, "help": "tokens per synthetic sentence (token learners)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_labels_and_init(self.labels, self.init)


class SyntheticSet:
    """Inputs initialised from random real examples of each class (or noise), with hard or learnable labels.

    A ``private`` set (a differentially private run) reads no training row: it starts from noise scaled by a
    public statistic of the learner's space and records no source rows, so only the mechanism touches the data.
    """

    def __init__(self, task: Task, dpc: int, learner: Learner, rng: np.random.Generator, *, labels: str = "hard",
                 init: str = "real", length: int = 32, device: str = "cpu", private: bool = False) -> None:
        check_labels_and_init(labels, init)
        if not isinstance(learner, (TokenLearner, FeatureLearner)):
            raise ConfigError(f"learner {learner.name!r} has no learnable input space: learned sets need token "
                              "embeddings (minilm, an HF model, textcnn-glove) or sentence vectors (minilm-frozen)")
        if private and init != "noise":
            raise ConfigError("a differentially private set starts from noise (init noise): init real copies "
                              "private examples")
        self.learner, self.label_kind, self.classes = learner, labels, task.num_classes
        if private:
            if dpc < 1:
                raise ConfigError(f"examples per class must be >= 1, got {dpc}")
            hard, picked = torch.arange(task.num_classes).repeat_interleave(dpc), None
            x, self.fixed = public_noise(task, len(hard), learner, rng, length)
        else:
            x, self.fixed, hard, picked = start_from_rows(task, dpc, learner, rng, init, length)
        self.source_indices = picked
        self.hard = hard.to(device)
        self.key = "features" if isinstance(learner, FeatureLearner) else "inputs_embeds"
        self.x = x.to(device).requires_grad_(True)
        self.fixed = {k: v.to(device) for k, v in self.fixed.items()}
        # soft: a learned distribution (logits start confident in the real class); unrestricted: a learned vector
        start = F.one_hot(self.hard, self.classes).float() * (3.0 if labels == "soft" else 1.0)
        self.label_param = start.requires_grad_(labels != "hard")

    @classmethod
    def seeded(cls, task: Task, dpc: int, learner: Learner, cfg: LearnedSetConfig, seed: int,
               labels: str | None = None, device: str = "cpu") -> tuple["SyntheticSet", np.random.Generator]:
        """The set a method starts from, with torch seeded and the generator the method goes on drawing from
        (a config with ``dp_epsilon`` makes a private set). torch stays seeded for the rest of the method's run;
        ``Distiller.distill`` gives the caller its own random state back afterwards."""
        rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        syn = cls(task, dpc, learner, rng, labels=labels or cfg.labels, init=cfg.init, length=cfg.length,
                  device=device, private=bool(getattr(cfg, "dp_epsilon", 0)))
        return syn, rng

    def inputs(self, rows: torch.Tensor | None = None, detach: bool = False) -> dict[str, torch.Tensor]:
        out = {self.key: self.x.detach() if detach else self.x, **self.fixed}
        return out if rows is None else {k: v[rows] for k, v in out.items()}

    def labels(self, detach: bool = False) -> torch.Tensor:
        if self.label_kind == "hard":
            return self.hard
        y = self.label_param.softmax(-1) if self.label_kind == "soft" else self.label_param
        return y.detach() if detach else y

    def parameters(self) -> list[torch.Tensor]:
        return [self.x] + ([self.label_param] if self.label_kind != "hard" else [])

    def rows_of(self, c: int) -> torch.Tensor:
        return torch.nonzero(self.hard == c).flatten()

    def artifact(self, distiller, task: Task, seed: int, labels: torch.Tensor | None = None, **kw) -> DistilledDataset:
        """The set as a DistilledDataset bound to its learner (``labels`` overrides the set's own)."""
        labels = self.labels(detach=True) if labels is None else labels
        kind = "features" if self.key == "features" else "token-embeddings"
        tensors = {k: v.detach().cpu() for k, v in self.inputs().items()}
        return distiller._artifact(task, seed, kind=kind, labels=labels.cpu(), tensors=tensors,
                                   bound_to=self.learner.describe(), source_indices=self.source_indices, **kw)


def start_from_rows(task: Task, dpc: int, learner: Learner, rng: np.random.Generator, init: str,
                    length: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, list[int]]:
    """Inputs from ``dpc`` random training rows per class (their embeddings, or noise at their spread), the fixed
    tensors beside them, their labels and the rows picked."""
    texts, pairs, y = task.columns("train")
    per_class = class_indices(y, task.spec.classes, dpc)
    picked = np.concatenate([rng.choice(idx, size=dpc, replace=False) for idx in per_class])
    hard = torch.tensor([y[i] for i in picked])
    enc = learner.encode([texts[i] for i in picked], None if pairs is None else [pairs[i] for i in picked])
    if isinstance(learner, FeatureLearner):
        x, fixed = enc["features"].float(), {}
    else:
        fit = {k: F.pad(v, (0, max(0, length - v.shape[1])))[:, :length] for k, v in enc.items()}
        model = learner.build(task.num_classes, seed=0)
        with torch.no_grad():
            x = learner.input_embeddings(model, dict(model.named_parameters()), fit["input_ids"]).float()
        # fixed, not learned: which positions count and, for pairs, which sentence each position belongs to
        # (single texts: all zeros, the model's default, so not stored)
        keep = ("attention_mask", "token_type_ids") if pairs is not None else ("attention_mask",)
        fixed = {k: fit[k] for k in keep if k in fit}
    if init == "noise":
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        rows = x[fixed["attention_mask"].bool()] if fixed else x
        x = torch.randn(x.shape, generator=gen) * rows.std()
        # noise has no sentence boundary to keep: every position counts, all as the first sentence
        fixed = {"attention_mask": torch.ones_like(fixed["attention_mask"])} if fixed else {}
    return x, fixed, hard, picked.tolist()


def public_noise(task: Task, n: int, learner: Learner, rng: np.random.Generator,
                 length: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``n`` noise inputs in the learner's space, scaled by public statistics only: the spread of its token
    embedding table, or of the sentence vectors of the class names. The noise is seeded: it reads no private
    data, so replaying it from the set's seed reveals nothing."""
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    if isinstance(learner, FeatureLearner):
        public = torch.as_tensor(learner.sentence_vectors(list(task.spec.classes), cache=False)).float()
        return torch.randn(n, public.shape[-1], generator=gen) * public.std(), {}
    table = learner.vocabulary()[1].float()
    x = torch.randn(n, length, table.shape[-1], generator=gen) * table.std()
    return x, {"attention_mask": torch.ones(n, length, dtype=torch.long)}  # every position counts


def real_inputs(task: Task, learner: Learner) -> tuple[dict[str, torch.Tensor], torch.Tensor, list[np.ndarray]]:
    """The training split encoded for ``learner``, its labels, and the row indices of each class."""
    texts, pairs, labels = task.columns("train")
    y = torch.tensor(labels)
    return learner.encode(texts, pairs), y, [np.flatnonzero(np.asarray(labels) == c) for c in range(task.num_classes)]


def fresh_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors for ``functional_call``: trainable ones as new leaves that require grad."""
    out = {**dict(model.named_buffers()), **{k: v.detach() for k, v in model.named_parameters()}}
    out.update({k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters() if v.requires_grad})
    return out
