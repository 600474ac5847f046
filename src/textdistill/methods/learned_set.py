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
    """Inputs initialised from random real examples of each class (or noise), with hard or learnable labels."""

    def __init__(self, task: Task, dpc: int, learner: Learner, rng: np.random.Generator, *, labels: str = "hard",
                 init: str = "real", length: int = 32, device: str = "cpu") -> None:
        check_labels_and_init(labels, init)
        if not isinstance(learner, (TokenLearner, FeatureLearner)):
            raise ConfigError(f"learner {learner.name!r} has no learnable input space: learned sets need token "
                              "embeddings (minilm, an HF model, textcnn-glove) or sentence vectors (minilm-frozen)")
        self.learner, self.label_kind, self.classes = learner, labels, task.num_classes
        texts, pairs, y = task.columns("train")
        per_class = class_indices(y, task.spec.classes, dpc)
        picked = np.concatenate([rng.choice(idx, size=dpc, replace=False) for idx in per_class])
        self.source_indices = picked.tolist()
        self.hard = torch.tensor([y[i] for i in picked], device=device)
        enc = learner.encode([texts[i] for i in picked], None if pairs is None else [pairs[i] for i in picked])
        if isinstance(learner, FeatureLearner):
            x, self.fixed = enc["features"].float(), {}
        else:
            fit = {k: F.pad(v, (0, max(0, length - v.shape[1])))[:, :length] for k, v in enc.items()}
            model = learner.build(task.num_classes, seed=0)
            with torch.no_grad():
                x = learner.input_embeddings(model, dict(model.named_parameters()), fit["input_ids"]).float()
            # fixed, not learned: which positions count and, for pairs, which sentence each position belongs to
            # (single texts: all zeros, the model's default, so not stored)
            keep = ("attention_mask", "token_type_ids") if pairs is not None else ("attention_mask",)
            self.fixed = {k: fit[k] for k in keep if k in fit}
        if init == "noise":
            gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
            rows = x[self.fixed["attention_mask"].bool()] if self.fixed else x
            x = torch.randn(x.shape, generator=gen) * rows.std()
            # noise has no sentence boundary to keep: every position counts, all as the first sentence
            self.fixed = {"attention_mask": torch.ones_like(self.fixed["attention_mask"])} if self.fixed else {}
        self.key = "features" if isinstance(learner, FeatureLearner) else "inputs_embeds"
        self.x = x.to(device).requires_grad_(True)
        self.fixed = {k: v.to(device) for k, v in self.fixed.items()}
        # soft: a learned distribution (logits start confident in the real class); unrestricted: a learned vector
        start = F.one_hot(self.hard, self.classes).float() * (3.0 if labels == "soft" else 1.0)
        self.label_param = start.requires_grad_(labels != "hard")

    @classmethod
    def seeded(cls, task: Task, dpc: int, learner: Learner, cfg: LearnedSetConfig, seed: int,
               labels: str | None = None, device: str = "cpu") -> tuple["SyntheticSet", np.random.Generator]:
        """The set a method starts from, with torch seeded and the generator the method goes on drawing from."""
        rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        syn = cls(task, dpc, learner, rng, labels=labels or cfg.labels, init=cfg.init, length=cfg.length,
                  device=device)
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
