"""The Python API in the package's face: tasks, methods and learners by name or as objects."""

from __future__ import annotations

import numbers
import os
from typing import TYPE_CHECKING

from .config import check_device
from .errors import ArgumentTypeError, ConfigError, kind_of

if TYPE_CHECKING:
    from .data import Task
    from .evaluation import EvalResult
    from .learners import Learner
    from .methods import Distiller
    from .distilled import DistilledDataset


def _task(task: "str | Task") -> "Task":
    from .data import Task, get_task

    if isinstance(task, Task):
        return task
    if isinstance(task, (str, os.PathLike)):
        return get_task(os.fspath(task))
    raise ArgumentTypeError(f"task must be a task name, a data file path or a Task, got {kind_of(task)}")


def _learner(learner: "str | Learner", what: str = "learner") -> "Learner":
    from .learners import Learner, get_learner

    if isinstance(learner, Learner):
        return learner
    if isinstance(learner, str):
        return get_learner(learner)
    raise ArgumentTypeError(f"{what} must be a learner name (str) or a Learner, got {kind_of(learner)}")


def _integer(what: str, value) -> int:
    """An integer argument (numpy's too); bool is an int to Python, never a count or a seed here."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise ArgumentTypeError(f"{what} must be an int, got {kind_of(value)}")
    return int(value)


def _count(what: str, value) -> int:
    value = _integer(what, value)
    if value < 1:
        raise ConfigError(f"{what} must be at least 1, got {value}")
    return value


def _plain(what: str, value, kind: type, expected: str):
    if not isinstance(value, kind):
        raise ArgumentTypeError(f"{what} must be {expected}, got {kind_of(value)}")
    return value


def distill(task: "str | Task", method: "str | Distiller", dpc: int, learner: "str | Learner | None" = None,
            seed: int = 0, device: str = "cpu", **options) -> "DistilledDataset":
    """Distil ``task`` into ``dpc`` examples per class with ``method`` (a name and its options, or a Distiller),
    in the space of ``learner`` (a name or a Learner; default: the method's, minilm for most), on ``device``."""
    from .methods import Distiller, get_method

    # every argument checked before the task loads or a model is built
    if not isinstance(method, (str, Distiller)):
        raise ArgumentTypeError(f"method must be a method name (str) or a Distiller, got {kind_of(method)}")
    dpc, seed = _count("dpc", dpc), _integer("seed", seed)
    if learner is not None and not isinstance(learner, str):
        _learner(learner)  # a name is checked where it is looked up
    _plain("device", device, str, "a device name (str: cpu, cuda, cuda:N)")
    check_device(device)
    if isinstance(method, str):
        method = get_method(method, **options)
    elif options:
        raise ConfigError(f"options {sorted(options)} go with a method name, not a {type(method).__name__} object")
    return method.distill(_task(task), dpc, _learner(learner or method.default_learner), seed=seed, device=device)


def evaluate(task: "str | Task", ds: "DistilledDataset | None" = None,
             learners: "str | Learner | list[str | Learner] | tuple" = ("minilm",), seeds: int = 5,
             device: str = "cpu", cache: bool = False, **options) -> "list[EvalResult]":
    """Train ``seeds`` fresh copies of each learner (a name, a Learner, or a list of them) on ``ds`` (None: the
    full training split) and test them on the task's test split: one result per learner. Runs are cached on disk
    only when ``cache=True``."""
    from .distilled import DistilledDataset
    from .evaluation import evaluate as run
    from .learners import Learner

    if ds is not None and not isinstance(ds, DistilledDataset):
        raise ArgumentTypeError(f"ds must be a DistilledDataset (DistilledDataset.load(path)) or None for the full "
                                f"training split, got {kind_of(ds)}")
    if isinstance(learners, (str, Learner)):  # one learner where a list is expected
        learners = [learners]
    elif not isinstance(learners, (list, tuple)):
        raise ArgumentTypeError(f"learners must be a learner name, a Learner, or a list of them, got "
                                f"{kind_of(learners)}")
    for i, x in enumerate(learners):
        if not isinstance(x, (str, Learner)):
            raise ArgumentTypeError(f"learners[{i}] must be a learner name (str) or a Learner, got {kind_of(x)}")
    seeds = _count("seeds", seeds)
    _plain("device", device, str, "a device name (str: cpu, cuda, cuda:N)")
    _plain("cache", cache, bool, "True or False")
    return run(_task(task), ds, list(learners), seeds=seeds, device=device, cache=cache, progress=True, **options)
