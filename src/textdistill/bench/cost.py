"""What cells cost: the seconds a finished cell took to compute, a suite's total, and the estimate of the rest."""

from __future__ import annotations

import json
import statistics

from ..report import duration
from .cells import Cell, load_task
from .suite import Suite


def distill_seconds(doc: dict) -> float:
    """A cell's distinct distillation (and decoding) steps, as measured when they ran."""
    steps = {json.dumps(step, sort_keys=True) for r in doc["records"] for name, step in (r.get("steps") or {}).items()
             if name != "evaluate" and isinstance(step, dict)}
    return sum(json.loads(step).get("seconds", 0.0) for step in steps)


def cell_seconds(doc: dict, counted: set | None = None) -> float:
    """What a cell costs to compute: its distillation and every evaluation run, as measured when they ran (a cell
    whose runs come from the cache finishes in seconds but costs what they cost); at least its wall time.
    ``counted``: the runs other cells of a suite have already counted (a seed-free method's sets share their
    cached runs), skipped and added to."""
    work = distill_seconds(doc)
    for r in doc["records"]:
        for run in r.get("runs", []):
            # the evaluation cache's key, less the task: the set, the learner, its recipe and seed
            key = (r.get("learner"), (r.get("train_set") or {}).get("fingerprint"),
                   json.dumps(r.get("recipe"), sort_keys=True), run.get("learner_seed"))
            if counted is not None and key[1] is not None and key[3] is not None:  # else: no key, always counted
                if key in counted:
                    continue
                counted.add(key)
            work += run.get("seconds", 0.0)
    return max(work, float(doc.get("seconds", 0.0)))


def share(doc: dict) -> float:
    """The share of the wall time a cell's seconds stand for: a cell run beside others (``--workers``) took a
    worker's seconds, the cores shared."""
    return 1 / doc.get("workers", 1)


def suite_cost(docs: list[dict]) -> dict:
    """What the finished cells cost together: computing (``cell_seconds``, runs served by the cache too, each run
    once), the wall time they took (their own seconds, each at its share; shards and Ray tasks elsewhere count
    whole), and the largest peak memory of one step."""
    steps = [step for doc in docs for r in doc["records"] for step in (r.get("steps") or {}).values()
             if isinstance(step, dict)]
    peak = {key: max((step[key] for step in steps if step.get(key) is not None), default=None)
            for key in ("peak_rss_mib", "peak_cuda_mib")}
    counted: set = set()
    return {"cells": len(docs), "compute_seconds": round(sum(cell_seconds(doc, counted) for doc in docs), 1),
            "wall_seconds": round(sum(float(doc.get("seconds", 0.0)) * share(doc) for doc in docs), 1),
            "workers": max((doc.get("workers", 1) for doc in docs), default=1), **peak}


class CostModel:
    """Seconds a cell should take, from the suite's finished cells: its distillation plus its evaluation runs.

    Distillation: the mean of the same task, method and budget, else of the same task and method, else of the
    same method (a method with none is guessed at the median distillation: "unmeasured"). Runs: as many of each
    kind of set as a finished cell of the method had (else the suite's seeds per learner on text), each at the
    mean seconds of a run of that kind at the same task and budget (text sets train the learner's recipe, bound
    sets their own), else at the task's nearest budget scaled by the examples a training step reads (a run costs
    about its batch: BBC at 10 per class is about 10 times 1 per class), else at the median run. A full-data
    cell: the mean of the task's, else of any; until one of each has finished, the other stands in (median).
    Seconds measured in a cell run beside others (``--workers``) count as their share of the wall time; from
    cells run alone, the estimate for a parallel run is an upper bound."""

    def __init__(self) -> None:
        self.distill: dict[tuple[str, str, int], list[float]] = {}  # (task, method label, dpc) -> seconds
        self.runs: dict[tuple[str, int, str], list[float]] = {}  # (task, dpc, kind of set) -> seconds of each run
        self.count: dict[str, dict[str, int]] = {}  # method label -> runs of each kind of set in one of its cells
        self.full: dict[str, list[float]] = {}  # task -> seconds of its full-data cell
        self.sets: list[float] = []  # seconds of every finished set cell

    def add(self, cell: "Cell", suite: Suite, doc: dict) -> None:
        task = suite.tasks[cell.task]["name"]
        part = share(doc)
        if cell.entry is None:
            self.full.setdefault(task, []).append(cell_seconds(doc) * part)
            return
        label, count = cell.label(suite), {}
        self.sets.append(cell_seconds(doc) * part)
        self.distill.setdefault((task, label, cell.dpc), []).append(distill_seconds(doc) * part)
        for r in doc["records"]:
            kind = r.get("kind", "text")
            runs = self.runs.setdefault((task, cell.dpc, kind), [])
            runs += [run.get("seconds", 0.0) * part for run in r.get("runs", [])]
            count[kind] = count.get(kind, 0) + len(r.get("runs", []))
        self.count[label] = count

    def estimate(self, cells: list["Cell"], suite: Suite) -> tuple[float, int]:
        """(seconds for these cells, how many of them have no measured method to go by)."""
        if not (self.full or self.distill):
            return 0.0, len(cells)
        every_full = [s for v in self.full.values() for s in v]
        total, unmeasured = 0.0, 0
        for cell in cells:
            task = suite.tasks[cell.task]["name"]
            if cell.entry is None:  # before any full-data cell (cells finish out of order in parallel): a set cell's
                unmeasured += not every_full
                total += statistics.fmean(self.full.get(task) or every_full or [statistics.median(self.sets)])
                continue
            entry, label = suite.methods[cell.entry], cell.label(suite)
            if not self.distill:  # only full-data cells so far
                total, unmeasured = total + statistics.median(every_full), unmeasured + 1
                continue
            distill = (self.distill.get((task, label, cell.dpc))
                       or [s for (t, m, _), v in self.distill.items() if (t, m) == (task, label) for s in v]
                       or [s for (_, m, _), v in self.distill.items() if m == label for s in v])
            unmeasured += not distill
            guess = {"text": suite.seeds * (1 if cell.bar else len(suite.learners) * (2 if entry.decode else 1))}
            total += statistics.fmean(distill) if distill else statistics.median(
                [s for v in self.distill.values() for s in v])
            runs = self.count.get(label, guess)
            total += sum(n * self._run_seconds(cell, kind, suite) for kind, n in runs.items())
        return total, unmeasured

    def _run_seconds(self, cell: "Cell", kind: str, suite: Suite) -> float:
        task = suite.tasks[cell.task]["name"]
        if self.runs.get((task, cell.dpc, kind)):
            return statistics.fmean(self.runs[(task, cell.dpc, kind)])
        budgets = [d for (t, d, k), v in self.runs.items() if (t, k) == (task, kind) and v]
        if budgets:
            near = min(budgets, key=lambda d: abs(d - cell.dpc))
            classes, most = load_task(suite.tasks[cell.task]).num_classes, suite.recipe.get("batch_size") or 64
            batch = min(most, classes * cell.dpc) / min(most, classes * near)  # a step's examples, here and there
            return statistics.fmean(self.runs[(task, near, kind)]) * batch
        return statistics.median([s for v in self.runs.values() for s in v] or [0.0])

    def describe(self, cells: list["Cell"], suite: Suite) -> str:
        if not cells:
            return "nothing to run"
        seconds, unmeasured = self.estimate(cells, suite)
        if not (self.full or self.distill):
            return "no cell finished yet: an estimate follows the first one"
        guess = (f" ({unmeasured} of them with a guessed distillation: their method has no finished cell yet)"
                 if unmeasured else "")
        return f"about {duration(seconds)} to go{guess}"
