"""The pipeline: distil a set, load the task it came from, train a fresh learner on it, evaluate, audit, decode.

The Python API in the package's face (tasks, methods and learners by name or as objects), and the only way in
for the CLI, bench and the demo: what a set records about its making, the device policy and the evaluation
protocol live here and below, once."""

from __future__ import annotations

import contextlib
import numbers
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from .config import check_device
from .errors import ArgumentTypeError, ConfigError, TextDistillWarning, kind_of

if TYPE_CHECKING:
    from .data import Task
    from .evaluation import EvalResult
    from .learners import Fitted, Learner
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
            seed: int = 0, device: str = "cpu", progress: bool = True, **options) -> "DistilledDataset":
    """Distil ``task`` into ``dpc`` examples per class with ``method`` (a name and its options, or a Distiller),
    in the space of ``learner`` (a name or a Learner; default: the method's, minilm for most), on ``device``.

    The one way a set is made (the CLI, bench and demo call it): a method that trains no model (coresets, ...)
    runs on the CPU whatever ``device`` names; the set records the time and peak memory it took and, under
    torchrun, the work each rank took. ``progress=False`` turns every progress bar of the run off."""
    from .distributed import init_from_env, work_per_rank, world
    from .measure import Meter
    from .methods import Distiller, get_method
    from .progress import quiet

    # every argument checked before the task loads or a model is built
    if not isinstance(method, (str, Distiller)):
        raise ArgumentTypeError(f"method must be a method name (str) or a Distiller, got {kind_of(method)}")
    dpc, seed = _count("dpc", dpc), _integer("seed", seed)
    if learner is not None and not isinstance(learner, str):
        _learner(learner)  # a name is checked where it is looked up
    _plain("device", device, str, "a device name (str: cpu, cuda, cuda:N)")
    _plain("progress", progress, bool, "True or False")
    check_device(device)
    if isinstance(method, str):
        method = get_method(method, **options)
    elif options:
        raise ConfigError(f"options {sorted(options)} go with a method name, not a {type(method).__name__} object")
    learner, task = _learner(learner or method.default_learner), _task(task)
    device = device if method.uses_device else "cpu"
    init_from_env(device)  # under torchrun: one rank of a data-parallel run
    with (contextlib.nullcontext() if progress else quiet()), Meter() as meter:
        ds = method.distill(task, dpc, learner, seed=seed, device=device)
    ds.provenance.distill_step = meter.result()
    if world()[1] > 1:  # the real rows (or experts) each rank took: the record that the work was split
        ds.provenance.data_parallel_work = work_per_rank()
    return ds


def load_task_of(ds: "DistilledDataset", task: "str | Task | None" = None, data_dir: str | None = None) -> "Task":
    """The task a set was distilled from: ``task`` when given (checked against the set's classes; a different
    content fingerprint warns), else the registered task its manifest names (a manifest never makes us read a
    file or folder it names: a set made from a data file needs ``task``)."""
    from .data import BENCHMARKS, BUILTIN, VALIDATION, get_task
    from .distilled import DistilledDataset

    _plain("ds", ds, DistilledDataset, "a DistilledDataset (DistilledDataset.load(path))")
    where = f"{ds.path}/manifest.json" if ds.path is not None else "the set"
    if task is None:
        origin = ds.task.get("origin")
        name = origin.get("name") if isinstance(origin, dict) else None
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where} does not record how to load its task: pass the task (--task)")
        base = name[: -len(VALIDATION)] if name.endswith(VALIDATION) else name
        if base not in BUILTIN and base not in BENCHMARKS:
            raise ConfigError(f"the set was distilled from a data file ({Path(name).name}); pass it again with --task "
                              "(and its --text-col, --label-col, ... options; in Python: task=)")
        if base in BENCHMARKS and origin.get("data_dir") and not data_dir:
            raise ConfigError(f"the set was distilled from a local copy of {name}; pass its folder (--data-dir)")
        subset = origin.get("subset")
        keys = {"train_per_class", "test_size", "seed"}
        if subset is not None and not (isinstance(subset, dict) and set(subset) <= keys
                                       and all(v is None or isinstance(v, int) for v in subset.values())):
            raise ConfigError(f"{where}: task.origin.subset is malformed; pass the task (--task)")
        task = get_task(name, data_dir=data_dir, subset=subset)
    else:
        task = _task(task)
    ds.check_task(task)  # other classes: every number would be about another task (audit: a false all-clear)
    # a DP set records no fingerprint of its training data (it would be a membership oracle)
    if "fingerprint" in ds.task and task.fingerprint != ds.task["fingerprint"]:
        warnings.warn(f"task {task.name} has fingerprint {task.fingerprint}, the set was distilled from "
                      f"{ds.task.get('fingerprint')}", TextDistillWarning, stacklevel=2)
    return task


def fit_on_set(ds: "DistilledDataset | None", learner: "str | Learner" = "minilm", seed: int = 0,
               recipe: dict | None = None, device: str = "cpu", task: "str | Task | None" = None) -> "Fitted":
    """A fresh ``learner`` trained on ``ds`` (None: ``task``'s full training split) as evaluation trains it: its
    run ``seed`` (the evaluation seeds' stream), the learner's recipe with ``recipe``'s overrides. Returns the
    model as ``Fitted``: ``.predict(texts, pairs)`` and ``.logits(texts, pairs)``."""
    from .distilled import DistilledDataset
    from .evaluation import fit_on_set as fit, run_recipe

    if ds is not None and not isinstance(ds, DistilledDataset):
        raise ArgumentTypeError(f"ds must be a DistilledDataset or None (with task: the full training split), got "
                                f"{kind_of(ds)}")
    if ds is None and task is None:
        raise ConfigError("fit_on_set with ds=None trains on a task's full training split: pass task")
    seed = _integer("seed", seed)
    _plain("device", device, str, "a device name (str: cpu, cuda, cuda:N)")
    check_device(device)
    task = load_task_of(ds, task) if ds is not None else _task(task)
    learner = _learner(learner).for_task(task)
    return fit(task, ds, learner, seed, run_recipe(learner, task, ds, recipe, full_data=ds is None), device=device)


def decode(ds: "DistilledDataset") -> "DistilledDataset":
    """A token-embedding set as text: each position's nearest token of its learner's vocabulary."""
    from .decode import decode_to_text
    from .distilled import DistilledDataset

    return decode_to_text(_plain("ds", ds, DistilledDataset, "a DistilledDataset (DistilledDataset.load(path))"))


def audit(ds: "DistilledDataset", task: "str | Task | None" = None, learner: str = "minilm-frozen",
          sample: int = 500, attack_learner: str | None = None, attack_seeds: int = 3) -> dict:
    """The privacy audit of a set (copying, distances, membership inference on ``NAME:validation`` sets; see
    ``textdistill.audit``) as a dict, its ``verdict`` a line."""
    from .audit import audit as run

    return run(ds, load_task_of(ds, task), learner=learner, sample=_count("sample", sample),
               attack_learner=attack_learner, attack_seeds=_count("attack_seeds", attack_seeds))


def evaluate(task: "str | Task", ds: "DistilledDataset | None" = None,
             learners: "str | Learner | list[str | Learner] | tuple" = ("minilm",), seeds: int = 5,
             device: str = "cpu", cache: bool = False, progress: bool = True, **options) -> "list[EvalResult]":
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
    _plain("progress", progress, bool, "True or False")
    return run(_task(task), ds, list(learners), seeds=seeds, device=device, cache=cache, progress=progress,
               **options)
