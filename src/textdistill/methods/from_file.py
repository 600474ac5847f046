"""file: a text set read from a file, such as a published distilled set, so it is measured like any method.

The path may hold ``{dpc}`` and ``{seed}`` (and ``*``), so a suite's budgets and distillation seeds pick the
matching published file: e.g. the released DiLM SST-2 sets, ``.../dpc_{dpc}.*/dataset/dataset_{seed}.json``.
"""

from __future__ import annotations

import glob
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data import Task
from ..data.files import class_ids, column, read_rows
from ..errors import ConfigError, DataError
from ..learners import Learner
from ..distilled import DistilledDataset
from .base import Distiller, register_method
from .teacher import TeacherLabelsConfig

TEXT_KEYS, LABEL_KEYS = ("text", "sentence"), ("label", "labels")


@dataclass
class FileConfig(TeacherLabelsConfig):
    path: str = field(default="", metadata={"help": "CSV/TSV/JSONL/Parquet file; {dpc}, {seed} and * are filled in"})
    text_col: str = field(default="", metadata={"help": "text column (default: text or sentence)"})
    label_col: str = field(default="", metadata={"help": "label column, class names or ids (default: label or labels)"})
    pair_col: str = field(default="", metadata={"help": "second text column of a pair task"})


def _pick(rows: list, given: str, defaults: tuple[str, ...]) -> str:
    return given or next((k for k in defaults if rows and k in rows[0][1]), defaults[0])


@register_method
class FromFile(Distiller):
    name = "file"
    description = "a text set read from a file (e.g. a published distilled set), checked against the task"
    Config = FileConfig

    def resolve(self, dpc: int, seed: int) -> Path:
        if not self.config.path:
            raise ConfigError("method file needs --path (a data file; {dpc} and {seed} are filled in)")
        pattern = self.config.path.format(dpc=dpc, seed=seed)
        found = sorted(glob.glob(str(Path(pattern).expanduser())))
        if len(found) != 1:
            raise ConfigError(f"{pattern} matches {len(found)} files; it must match exactly one")
        return Path(found[0])

    def run(self, task: Task, dpc: int, learner: Learner, seed: int = 0) -> DistilledDataset:
        path = self.resolve(dpc, seed)
        rows = read_rows(path)
        if not rows:
            raise DataError(f"{path}: no data rows")
        texts = column(path, rows, _pick(rows, self.config.text_col, TEXT_KEYS), text=True)
        pairs = column(path, rows, self.config.pair_col, text=True) if self.config.pair_col else None
        if task.spec.pair != (pairs is not None):
            raise ConfigError(f"task {task.name} {'is' if task.spec.pair else 'is not'} a pair task: "
                              f"{'give' if task.spec.pair else 'drop'} --pair-col")
        names = list(task.spec.classes)
        labels = class_ids(path, rows, _pick(rows, self.config.label_col, LABEL_KEYS), names,
                           f"the classes of {task.name}")
        counts = Counter(labels)
        if any(counts[c] != dpc for c in range(len(names))):
            raise DataError(f"{path}: {dict(sorted(counts.items()))} examples per class id, expected {dpc} of each")
        return self._artifact(task, seed, kind="text", texts=texts, text_pairs=pairs, labels=torch.tensor(labels),
                              log={"file": str(path)})
