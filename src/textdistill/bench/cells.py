"""A suite's cells: what one unit of work is, the key that fixes its result, and the order they run in."""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass

from ..cache import key_of
from .suite import Suite


@dataclass(frozen=True)
class Cell:
    """One unit of work: a distilled set (entry, dpc, set seed) with its evaluations, or the full data."""

    task: int  # index into suite.tasks
    entry: int | None = None  # index into suite.methods; None: full data
    dpc: int | None = None
    set_seed: int | None = None
    bar: bool = False  # the random set evaluated with the suite's bar learner (``Suite.bar``) only

    def key(self, suite: Suite) -> str:
        """What fixes the cell's result; the task's content counts, so a changed task is run again."""
        task = suite.tasks[self.task]
        if self.bar:
            return key_of("bar", *self._set_parts(suite), suite.bar, suite.seeds, suite.recipe)
        if self.entry is None:
            from ..learners import get_learner

            recipes = [get_learner(name).full_data for name in suite.learners]
            return key_of("full", task, load_task(task).fingerprint, suite.learners, suite.full_seeds or suite.seeds,
                          suite.recipe, recipes)
        audited = ("audit",) if suite.audit else ()  # turning the audit on runs the cells again, with it
        return key_of("set", *self._set_parts(suite), suite.learners, suite.seeds, suite.recipe, *audited)

    def set_key(self, suite: Suite) -> str:
        """What fixes the distilled set alone: suites that evaluate it differently share it."""
        return key_of("set", *self._set_parts(suite))

    def _set_parts(self, suite: Suite) -> tuple:
        from ..methods import get_method

        entry = suite.methods[self.entry]
        config = get_method(entry.method, **entry.options).config.to_dict()  # defaults count: a new default, a new set
        task = suite.tasks[self.task]
        loaded = load_task(task)  # the learner reads the task's max_length: it shapes the set
        return (task, loaded.fingerprint, loaded.spec.max_length, asdict(entry), config, suite.learner_of(entry),
                self.dpc, self.set_seed)

    def describe(self, suite: Suite) -> str:
        task = suite.tasks[self.task]["name"]
        if self.entry is None:
            return f"{task} full data"
        return f"{task} {self.label(suite)} {self.dpc}/class set {self.set_seed}"

    def label(self, suite: Suite) -> str:
        """The method column of a set cell; a bar cell's names its learner."""
        return f"{suite.bar} on random" if self.bar else suite.methods[self.entry].label


def load_task(spec: dict):
    """A suite's task, loaded once per process (cell keys need its content fingerprint)."""
    return _load_task(json.dumps(spec, sort_keys=True))


@functools.lru_cache(maxsize=None)
def _load_task(spec_json: str):
    from ..data import get_task

    spec = json.loads(spec_json)
    return get_task(spec["name"], data_dir=spec.get("data_dir"), subset=spec.get("subset"))


def plan(suite: Suite) -> list[Cell]:
    """Full data first, then budget by budget in the suite's order (list the budgets that matter most first), each
    budget's bar cells (the random sets evaluated with ``suite.bar``) after its methods."""
    tasks, methods, sets = range(len(suite.tasks)), range(len(suite.methods)), range(suite.sets)
    random = next(e for e, entry in enumerate(suite.methods) if entry.method == "random")
    bars = [True] if suite.bar and suite.bar not in suite.learners else []
    return [Cell(t) for t in tasks] + [Cell(t, e, d, s) for d in suite.dpc for t in tasks for e in methods for s in sets] \
        + [Cell(t, random, d, s, bar) for d in suite.dpc for t in tasks for s in sets for bar in bars]
