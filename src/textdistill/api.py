"""The Python API in the package's face: tasks, methods and learners by name or as objects."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import check_device
from .errors import ConfigError

if TYPE_CHECKING:
    from .data import Task
    from .evaluation import EvalResult
    from .learners import Learner
    from .methods import Distiller
    from .distilled import DistilledDataset


def _task(task: "str | Task") -> "Task":
    from .data import get_task

    return get_task(task) if isinstance(task, str) else task


def _learner(learner: "str | Learner") -> "Learner":
    from .learners import get_learner

    return get_learner(learner) if isinstance(learner, str) else learner


def distill(task: "str | Task", method: "str | Distiller", dpc: int, learner: "str | Learner | None" = None,
            seed: int = 0, device: str = "cpu", **options) -> "DistilledDataset":
    """Distil ``task`` into ``dpc`` examples per class with ``method`` (a name and its options, or a Distiller),
    in the space of ``learner`` (a name or a Learner; default: the method's, minilm for most), on ``device``."""
    from .methods import get_method

    check_device(device)
    if isinstance(method, str):
        method = get_method(method, **options)
    elif options:
        raise ConfigError(f"options {sorted(options)} go with a method name, not a {type(method).__name__} object")
    return method.distill(_task(task), dpc, _learner(learner or method.default_learner), seed=seed, device=device)


def evaluate(task: "str | Task", ds: "DistilledDataset | None" = None,
             learners: "list[str | Learner] | tuple" = ("minilm",), seeds: int = 5, device: str = "cpu",
             cache: bool = False, **options) -> "list[EvalResult]":
    """Train ``seeds`` fresh copies of each learner on ``ds`` (None: the full training split) and test them on
    the task's test split: one result per learner. Runs are cached on disk only when ``cache=True``."""
    from .evaluation import evaluate as run

    return run(_task(task), ds, list(learners), seeds=seeds, device=device, cache=cache, progress=True, **options)
