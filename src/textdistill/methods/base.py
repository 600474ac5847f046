"""The base of every method: its config and Distiller classes, the registry, and the idioms they share."""

from __future__ import annotations

import fnmatch
import math
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ..config import check_device
from ..data import Task
from ..errors import ArgumentTypeError, ConfigError, DataError, TextDistillError, kind_of
from ..learners import Learner
from ..distilled import DistilledDataset
from ..seeds import check_set_seed, torch_rng_kept
from .method_config import MethodConfig

if TYPE_CHECKING:
    import torch


class Distiller:
    """A method: the constructor stores the config; ``distill`` does the work (a method implements ``run``)."""

    name: ClassVar[str]
    description: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    default_learner: ClassVar[str] = "minilm"  # the learner it works with when none is named
    uses_device: ClassVar[bool] = False  # True: its learners and models run on ``distill``'s device
    task_kinds: ClassVar[tuple[str, ...]] = ("classification",)  # the kinds of task (TaskSpec.kind) it distils
    device: str = "cpu"  # the device of the run in progress (an argument of ``distill``, never a config option)

    def __init__(self, config: MethodConfig | None = None) -> None:
        self.config = config if config is not None else self.Config()

    def distill(self, task: Task, dpc: int, learner: Learner, seed: int = 0, device: str = "cpu") -> DistilledDataset:
        """The set, computed on ``device``; ``learner`` reads the task's texts at the task's ``max_length``."""
        check_device(device)
        if device != "cpu" and not self.uses_device:
            raise ConfigError(f"method {self.name!r} runs on the CPU only (device {device!r})")
        check_set_seed(seed)
        if task.spec.kind not in self.task_kinds:
            raise ConfigError(f"method {self.name!r} distils {' or '.join(self.task_kinds)} tasks, and task "
                              f"{task.name!r} is a {task.spec.kind} task")
        self.device = device
        learner = learner.for_task(task)
        # methods seed torch's global generators for the rest of their run (learned_set.SyntheticSet.seeded,
        # gradmm, learned-labels, train's dropout): the caller's stream is left as it was
        with torch_rng_kept(device):
            ds = self.run(task, dpc, learner, seed=seed)
        ds.made_with = ds.made_with or learner.describe()  # every set says whose space it was made in
        return ds

    def run(self, task: Task, dpc: int, learner: Learner, seed: int = 0) -> DistilledDataset:
        """What a method implements: ``distill`` with the learner already fitted to the task."""
        raise NotImplementedError

    def _artifact(self, task: Task, seed: int, **kw) -> DistilledDataset:
        """The method's set; a text set takes teacher labels here when its config asks for them."""
        from .teacher import TeacherLabelsConfig, relabel

        if kw.get("kind") == "text" and isinstance(self.config, TeacherLabelsConfig):
            kw["labels"], logged = relabel(self.config, task, kw["texts"], kw.get("text_pairs"), kw["labels"])
            kw["log"] = {**kw.get("log", {}), **logged}
        return DistilledDataset(label_names=list(task.spec.classes), method=self.name, config=self.config.to_dict(),
                                seed=seed, task=task.describe(), **kw)


METHODS: dict[str, type[Distiller]] = {}


def register_method(cls: type[Distiller]) -> type[Distiller]:
    METHODS[cls.name] = cls
    return cls


def list_methods(pattern: str = "*") -> list[str]:
    return [n for n in METHODS if fnmatch.fnmatch(n, pattern)]


def get_method(name: str, **options) -> Distiller:
    if not isinstance(name, str):
        raise ArgumentTypeError(f"method must be a method name (str), got {kind_of(name)}")
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    cls = METHODS[name]
    return cls(cls.Config.from_dict(options))


def class_indices(labels: list[int] | np.ndarray, classes: tuple[str, ...], dpc: int) -> list[np.ndarray]:
    """Row indices per class, checking that every class can supply ``dpc`` examples."""
    if dpc < 1:
        raise ConfigError(f"examples per class must be >= 1, got {dpc}")
    labels = np.asarray(labels)
    out = []
    for c, name in enumerate(classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) == 0:
            raise DataError(f"class {name!r} has no training examples")
        if len(idx) < dpc:
            raise DataError(f"class {name!r} has {len(idx)} training examples, fewer than the budget of {dpc} per class")
        out.append(idx)
    return out


def fresh_model(learner: Learner, task: Task, seed: int, step: int, device: str = "cpu") -> "torch.nn.Module":
    """The fresh learner a method's outer step works with, seeded from (set seed, step): every step sees a new
    initialisation, and a set seed never shares one with another (nor with evaluation's seeds: ``seeds``)."""
    return learner.build(task.num_classes, seed=seed * 1_000_003 + step).to(device)


def real_batch(rng: np.random.Generator, rows: "int | np.ndarray", size: int) -> "torch.Tensor":
    """A random batch of at most ``size`` distinct rows of ``rows`` (a class's row indices, or all ``rows`` rows)."""
    import torch

    return torch.from_numpy(rng.choice(rows, size=min(size, rows if isinstance(rows, int) else len(rows)),
                                       replace=False))


def check_finite(method: str, loss: float, step: int) -> None:
    if not math.isfinite(loss):
        raise TextDistillError(f"{method}: the loss became {loss} at outer step {step}; lower the outer learning "
                               "rate (--outer-lr) or the initial step size")


def descend(method: str, opt: "torch.optim.Optimizer", loss: "torch.Tensor", step: int, history: list[float]) -> None:
    """One outer optimiser step on a matching loss, refusing a non-finite one; the value joins ``history``."""
    value = loss.item()
    check_finite(method, value, step)
    opt.zero_grad()
    loss.backward()
    opt.step()
    history.append(value)


def thin(history: list[float], points: int = 50) -> list[float]:
    """A loss curve kept in the artifact's log at about ``points`` points."""
    return [round(h, 4) for h in history[:: max(1, len(history) // points)]]


def label_probe(task: Task, learner: Learner):
    """Logistic regression on the learner's sentence vectors of the real training data."""
    from sklearn.linear_model import LogisticRegression

    texts, pairs, labels = task.columns("train")
    return LogisticRegression(max_iter=1000).fit(learner.sentence_vectors(texts, pairs), labels)


def kmeans_nearest(vectors: np.ndarray, k: int, rng: np.random.Generator, n_init: int = 10) -> np.ndarray:
    """Positions (into ``vectors``) of the k distinct examples nearest the centroids of a k-means seeded from
    ``rng``: the ``kmeans`` coreset's choice, and DiLM's (its teachers and its final selection)."""
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=n_init, random_state=int(rng.integers(2**31))).fit(vectors)
    picked: list[int] = []
    for centre in km.cluster_centers_:
        order = np.argsort(np.linalg.norm(vectors - centre, axis=1))
        picked.append(int(next(i for i in order if i not in picked)))  # distinct examples
    return np.array(picked)
