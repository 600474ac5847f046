"""Benchmark suites: tasks x methods x examples per class x learners x seeds, from one YAML file.

Every finished cell is one JSON file under ``OUT/cells`` named by the fingerprint of its configuration, so an
interrupted run (or one split into shards over several processes) resumes without redoing finished cells;
distilled sets are saved under ``OUT/sets`` and evaluations go through the shared evaluation cache.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from .cache import atomic_write, key_of
from .config import check_device, to_bool
from .errors import ArtifactError, ConfigError, kind_of
from .report import FULL_SET_RECIPE, duration


@dataclass
class Entry:
    """One method column of a suite: a registered method with options, under a label."""

    label: str
    method: str
    options: dict = field(default_factory=dict)
    learner: str | None = None  # the space it distils in (default: the suite's first learner)
    decode: bool = False  # also evaluate a token-embedding set decoded to text


@dataclass
class Published:
    """A published number shown beside ours: dpc is an int or "full"."""

    task: str
    method: str
    dpc: int | str
    accuracy: float
    source: str
    learner: str | None = None


@dataclass
class Suite:
    name: str
    tasks: list[dict]  # {name, data_dir?, subset?}
    learners: list[str]
    methods: list[Entry]
    dpc: list[int]
    sets: int = 1  # distillation seeds 0..sets-1
    seeds: int = 5  # learner seeds per set
    full_seeds: int | None = None  # learner seeds on the full data (default: seeds)
    recipe: dict = field(default_factory=dict)  # training recipe overrides for every evaluation
    published: list[Published] = field(default_factory=list)
    description: str = ""
    distill_learner: str | None = None  # the learner the methods work with (default: the first of learners)
    audit: bool = False  # privacy audit of every distilled set (copying, distances, membership on NAME:validation)

    def to_dict(self) -> dict:
        return asdict(self)

    def learner_of(self, entry: Entry) -> str:
        return entry.learner or self.distill_learner or self.learners[0]

    def evaluated_with(self, learners: list[str] | None = None, seeds: int | None = None,
                       full_seeds: int | None = None, dpc: list[int] | None = None,
                       tasks: list[str] | None = None) -> "Suite":
        """The same sets (still distilled with this suite's learner) evaluated with other learners or seeds, or
        at other budgets, or on some of its tasks (named; a cell's key does not depend on the other budgets or
        tasks, so finished cells are kept)."""
        for what, n in (("seeds", seeds), ("full_seeds", full_seeds), *(("dpc", d) for d in dpc or [])):
            if n is not None and n < 1:
                raise ConfigError(f"{what} must be at least 1, got {n}")
        names = [t["name"] for t in self.tasks]
        if unknown := sorted(set(tasks or []) - set(names)):
            raise ConfigError(f"tasks {unknown} are not in suite {self.name} (its tasks: {', '.join(names)})")
        return replace(self, tasks=[t for t in self.tasks if not tasks or t["name"] in tasks],
                       learners=list(learners or self.learners),
                       distill_learner=self.distill_learner or self.learners[0], seeds=seeds or self.seeds,
                       full_seeds=full_seeds or self.full_seeds, dpc=list(dict.fromkeys(dpc or self.dpc)))


def _check_keys(where: str, values: dict, cls) -> None:
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")


def _expect(where: str, field: str, value, expected: str, ok: bool) -> None:
    """One line naming the field, what it must be and what it was."""
    if not ok:
        raise ConfigError(f"{where}: {field} must be {expected}, got {kind_of(value)}")


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _listed(where: str, field: str, value, expected: str) -> list:
    """A list field; one name alone stands for a list of it (``methods: kmeans``)."""
    items = [value] if isinstance(value, str) else value
    _expect(where, field, value, f"a list of {expected} (or one name)", isinstance(items, list))
    return items


def _optional_str(where: str, field: str, value) -> None:
    _expect(where, field, value, "a string", value is None or isinstance(value, str))


def _task_spec(where: str, field: str, raw) -> dict:
    task = {"name": raw} if isinstance(raw, str) else raw
    if not isinstance(task, dict) or "name" not in task or set(task) - {"name", "data_dir", "subset"}:
        raise ConfigError(f"{where}: {field}: a task is a name or a mapping of name, data_dir, subset; got {raw!r}")
    _expect(where, f"{field}.name", task["name"], "a string", isinstance(task["name"], str) and task["name"])
    _optional_str(where, f"{field}.data_dir", task.get("data_dir"))
    subset = task.get("subset")
    if subset is not None:
        keys = ("train_per_class", "test_size", "seed")
        _expect(where, f"{field}.subset", subset, f"a mapping of {', '.join(keys)}",
                isinstance(subset, dict) and set(subset) <= set(keys))
        for key, value in subset.items():
            ok = value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= (key != "seed"))
            _expect(where, f"{field}.subset.{key}", value, "an integer" + (" >= 0" if key == "seed" else " >= 1"), ok)
    _check_component(where, "task name", Path(task["name"]).stem)  # a file task is named by its file's stem
    return task


def _entry(where: str, field: str, raw) -> Entry:
    from .methods import METHODS, get_method

    if isinstance(raw, str):
        raw = {"method": raw}
    if not isinstance(raw, dict) or "method" not in raw:
        raise ConfigError(f"{where}: {field}: a method is a name or a mapping with 'method'; got {raw!r}")
    _check_keys(f"{where}: {field}", raw, Entry)
    _expect(where, f"{field}.method", raw["method"], "a string (a method name)", isinstance(raw["method"], str))
    _expect(where, f"{field}.label", raw.get("label"), "a string", isinstance(raw.get("label", ""), str))
    options = raw.get("options") or {}
    _expect(where, f"{field}.options", raw.get("options"), "a mapping of option: value", isinstance(options, dict))
    _optional_str(where, f"{field}.learner", raw.get("learner"))
    entry = Entry(**{"label": raw["method"], **raw, "options": options,
                     "decode": to_bool(raw.get("decode", False), f"{where}: {field}.decode")})
    _check_component(f"{where}: {field}", "label", entry.label)
    if entry.method not in METHODS:
        raise ConfigError(f"{where}: {field}.method: unknown method {entry.method!r}; known: {', '.join(METHODS)}")
    try:
        get_method(entry.method, **entry.options)  # checks the options
    except (ConfigError, TypeError, ValueError) as e:  # an option of the wrong type can fail a comparison
        raise ConfigError(f"{where}: {field}.options: {e}") from None
    return entry


def _published(where: str, field: str, raw) -> Published:
    _expect(where, field, raw, "a mapping of task, method, dpc, accuracy, source (and learner)",
            isinstance(raw, dict))
    _check_keys(f"{where}: {field}", raw, Published)
    if missing := [f.name for f in fields(Published) if f.name != "learner" and f.name not in raw]:
        raise ConfigError(f"{where}: {field}: missing {', '.join(missing)}")
    for key in ("task", "method", "source"):
        _expect(where, f"{field}.{key}", raw[key], "a string", isinstance(raw[key], str))
    _optional_str(where, f"{field}.learner", raw.get("learner"))
    _expect(where, f"{field}.dpc", raw["dpc"], "a positive integer or 'full'",
            _is_count(raw["dpc"]) or raw["dpc"] == "full")
    accuracy = raw["accuracy"]
    _expect(where, f"{field}.accuracy", accuracy, "a number",
            isinstance(accuracy, (int, float)) and not isinstance(accuracy, bool))
    return Published(**raw)


def _recipe(where: str, raw) -> dict:
    """The suite's training recipe overrides: known fields, each of its type, values the Recipe accepts."""
    from .recipe import Recipe

    recipe = raw or {}
    _expect(where, "recipe", raw, "a mapping of recipe field: value", isinstance(recipe, dict))
    _check_keys(f"{where}: recipe", recipe, Recipe)
    defaults = Recipe()
    for key, value in recipe.items():
        default = getattr(defaults, key)
        if value is None or isinstance(default, bool):  # None: the learner's own; booleans: checked by the Recipe
            continue
        if key == "batch_size" or isinstance(default, int):
            _expect(where, f"recipe.{key}", value, "an integer", isinstance(value, int) and not isinstance(value, bool))
        elif isinstance(default, float):
            _expect(where, f"recipe.{key}", value, "a number",
                    isinstance(value, (int, float)) and not isinstance(value, bool))
        elif isinstance(default, str):
            _expect(where, f"recipe.{key}", value, "a string", isinstance(value, str))
        elif isinstance(default, tuple):
            _expect(where, f"recipe.{key}", value, "a list of numbers", isinstance(value, list)
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))
    try:
        Recipe.from_dict({k: v for k, v in recipe.items() if v is not None})
    except ConfigError as e:
        raise ConfigError(f"{where}: recipe: {e}") from None
    return recipe


def _check_component(where: str, what: str, value) -> None:
    """Labels and file-task names end up in paths under OUT: one plain folder-name part each, never a way out."""
    if (not isinstance(value, str) or not value or value.startswith(".") or "/" in value or "\\" in value
            or Path(value).is_absolute()):
        raise ConfigError(f"{where}: {what} {value!r} must be a plain name (no '/', '\\', '..', leading '.' or "
                          "absolute path): it names folders under --out")


def parse_suite(raw: dict, where: str = "suite") -> Suite:
    """A Suite from a YAML mapping, with every name and option checked before anything runs."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    _check_keys(where, raw, Suite)
    missing = [k for k in ("tasks", "learners", "methods", "dpc") if not raw.get(k)]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    # every field's type here, so that a mistyped suite is one line naming the field, never a traceback
    for key in ("name", "description", "distill_learner"):
        _optional_str(where, key, raw.get(key))
    tasks = [_task_spec(where, f"tasks[{i}]", t)
             for i, t in enumerate(_listed(where, "tasks", raw["tasks"], "task names or mappings"))]
    learners = _listed(where, "learners", raw["learners"], "learner names")
    for i, name in enumerate(learners):
        _expect(where, f"learners[{i}]", name, "a string (a learner name)", isinstance(name, str) and name)
    entries = [_entry(where, f"methods[{i}]", m)
               for i, m in enumerate(_listed(where, "methods", raw["methods"], "method names or mappings"))]
    if not any(e.method == "random" for e in entries):  # random is the floor every table is read against
        entries.insert(0, Entry("random", "random"))
    labels = [e.label for e in entries]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{where}: method labels must be unique, got {labels}")
    dpc = raw["dpc"] if isinstance(raw["dpc"], list) else [raw["dpc"]]
    _expect(where, "dpc", raw["dpc"], "a positive integer or a list of positive integers", all(map(_is_count, dpc)))
    for key in ("sets", "seeds", "full_seeds"):
        if key in raw and not (key == "full_seeds" and raw[key] is None):
            _expect(where, key, raw[key], "a positive integer", _is_count(raw[key]))
    published = raw.get("published") or []
    _expect(where, "published", raw.get("published"), "a list of mappings", isinstance(published, list))
    published = [_published(where, f"published[{i}]", p) for i, p in enumerate(published)]
    return Suite(**{**raw, "tasks": tasks, "learners": learners, "methods": entries, "dpc": dpc,
                    "published": published, "name": raw.get("name") or where,
                    "description": raw.get("description") or "", "recipe": _recipe(where, raw.get("recipe")),
                    "audit": to_bool(raw.get("audit", False), f"{where}: audit")})


def load_suite(path: str | Path) -> Suite:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the suite ({e})") from None
    if isinstance(raw, dict):
        raw.setdefault("name", Path(path).stem)
    return parse_suite(raw, str(path))


@dataclass(frozen=True)
class Cell:
    """One unit of work: a distilled set (entry, dpc, set seed) with its evaluations, or the full data."""

    task: int  # index into suite.tasks
    entry: int | None = None  # index into suite.methods; None: full data
    dpc: int | None = None
    set_seed: int | None = None

    def key(self, suite: Suite) -> str:
        """What fixes the cell's result; the task's content counts, so a changed task is run again."""
        task = suite.tasks[self.task]
        if self.entry is None:
            from .learners import get_learner

            recipes = [get_learner(name).full_data for name in suite.learners]
            return key_of("full", task, load_task(task).fingerprint, suite.learners, suite.full_seeds or suite.seeds,
                          suite.recipe, recipes)
        audited = ("audit",) if suite.audit else ()  # turning the audit on runs the cells again, with it
        return key_of("set", *self._set_parts(suite), suite.learners, suite.seeds, suite.recipe, *audited)

    def set_key(self, suite: Suite) -> str:
        """What fixes the distilled set alone: suites that evaluate it differently share it."""
        return key_of("set", *self._set_parts(suite))

    def _set_parts(self, suite: Suite) -> tuple:
        from .methods import get_method

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
        return f"{task} {suite.methods[self.entry].label} {self.dpc}/class set {self.set_seed}"


def load_task(spec: dict):
    """A suite's task, loaded once per process (cell keys need its content fingerprint)."""
    return _load_task(json.dumps(spec, sort_keys=True))


@functools.lru_cache(maxsize=None)
def _load_task(spec_json: str):
    from .data import get_task

    spec = json.loads(spec_json)
    return get_task(spec["name"], data_dir=spec.get("data_dir"), subset=spec.get("subset"))


def plan(suite: Suite) -> list[Cell]:
    """Full data first, then budget by budget in the suite's order (list the budgets that matter most first)."""
    tasks, methods, sets = range(len(suite.tasks)), range(len(suite.methods)), range(suite.sets)
    return [Cell(t) for t in tasks] + [Cell(t, e, d, s) for d in suite.dpc for t in tasks for e in methods for s in sets]


class Runner:
    """Runs a suite's cells into ``out``; tasks and learners are loaded once per process."""

    def __init__(self, suite: Suite, out: str | Path, device: str = "cpu") -> None:
        self.suite, self.out, self.device = suite, Path(out), device
        self._learners: dict[str, object] = {}

    def task(self, i: int):
        return load_task(self.suite.tasks[i])

    def learner(self, name: str):
        from .learners import get_learner

        if name not in self._learners:
            self._learners[name] = get_learner(name)
        return self._learners[name]

    def _evaluate(self, task, source, learner: str, seeds: int, **options) -> tuple[dict, dict]:
        from .evaluation import evaluate
        from .measure import Meter

        with Meter() as m:
            (r,) = evaluate(task, source, [learner], seeds=seeds, recipe=self.suite.recipe, device=self.device,
                            cache=True, progress=False, **options)
        return r.to_dict(), m.result()

    def distilled(self, cell: Cell):
        """The cell's distilled set: loaded when a finished one is on disk, else distilled and saved."""
        from .distilled import DistilledDataset
        from .distributed import agree, barrier, is_main, work_per_rank, world
        from .measure import Meter
        from .methods import get_method

        from .privacy import is_private

        entry, key = self.suite.methods[cell.entry], cell.set_key(self.suite)
        task = self.task(cell.task)
        path = self.out / "sets" / f"{task.name}-{entry.label}-{cell.dpc}-s{cell.set_seed}"
        # The key holds the task's fingerprint, a membership oracle: a DP set's is kept beside the sets, not in one.
        private_key = self.out / "private-set-keys" / path.name

        def finished() -> DistilledDataset | None:
            if (path / "manifest.json").exists():
                try:
                    ds = DistilledDataset.load(path)
                    recorded = (private_key.read_text() if private_key.exists() else None) if is_private(ds) \
                        else ds.log.get("set_key")
                    return ds if recorded == key else None
                except ArtifactError:
                    pass  # a damaged set is distilled again
            return None

        # Under torchrun (bench --distill-only) the ranks distil together or not at all, as rank 0 finds the set.
        ds = finished()
        if agree(ds is not None):
            return (ds if ds is not None else finished()), path
        method = get_method(entry.method, **entry.options)
        with Meter() as m:  # the suite's device for methods that use one; coresets select on the CPU
            ds = method.distill(task, cell.dpc, self.learner(self.suite.learner_of(entry)), seed=cell.set_seed,
                                device=self.device if method.uses_device else "cpu")
        ds.log["distill_step"] = m.result()
        if not is_private(ds):
            ds.log["set_key"] = key
        if world()[1] > 1:  # the real rows (or experts) each rank took: the record that the work was split
            ds.log["data_parallel_work"] = work_per_rank()
        if not is_main():
            barrier()  # rank 0 writes the set
            return ds, path
        if is_private(ds):
            atomic_write(private_key, lambda p: p.write_text(key))
        ds.save(path, overwrite=True)
        barrier()
        # the set's page, linked from the report; none for a DP set: the page shows the nearest real training
        # sentences and a map of the private data, outside the mechanism
        if not is_private(ds):
            try:  # a picture that fails must not cost the cell
                from .page import write_set_page

                write_set_page(ds, task, path / "page.html")
            except Exception as e:  # noqa: BLE001
                print(f"warning: no page for {path.name}: {type(e).__name__}: {e}", file=sys.stderr)
        return ds, path

    def run_cell(self, cell: Cell) -> list[dict]:
        from .decode import decode_to_text
        from .measure import Meter

        suite, task = self.suite, self.task(cell.task)
        if cell.entry is None:
            # Both: the full-data recipe (what "% of full" divides by) and the small sets' recipe, whose shorter
            # schedule is what the sets get (the gap between the two is part of the comparison).
            records = []
            for name in suite.learners:
                for method, converged in (("full", True), (FULL_SET_RECIPE, False)):
                    result, step = self._evaluate(task, None, name, suite.full_seeds or suite.seeds,
                                                  full_data_recipe=converged)
                    records.append({**result, "task": task.name, "method": method, "dpc": None, "set_seed": None,
                                    "steps": {"evaluate": step}})
            return records
        entry = suite.methods[cell.entry]
        ds, path = self.distilled(cell)
        sets = [(entry.label, ds, {"distill": ds.log.get("distill_step")})]
        if entry.decode and ds.kind == "token-embeddings":
            with Meter() as m:
                text = decode_to_text(ds)
            sets.append((f"{entry.label}+text", text, {"decode": m.result()}))
        records = []
        for label, source, steps in sets:
            bound = source.kind != "text" and source.bound_learner()
            privacy = audit_summary(source, task) if suite.audit else None
            for name in [bound] if bound else suite.learners:
                result, step = self._evaluate(task, source, name, suite.seeds)
                records.append({**result, "task": task.name, "method": label, "base_method": entry.method,
                                "options": entry.options, "distill_learner": suite.learner_of(entry),
                                "dpc": cell.dpc, "set_seed": cell.set_seed, "kind": source.kind,
                                "artifact": str(path.relative_to(self.out)),
                                "steps": {**steps, "evaluate": step}, **({"audit": privacy} if privacy else {})})
        return records


def audit_summary(source, task) -> dict:
    """The audit's headline numbers for a report column (``textdistill audit`` gives them all)."""
    from .audit import audit

    r = audit(source, task)
    copying, membership = r["copying"] or {}, r["membership"] or {}
    return {"exact_copies": copying.get("exact_copies"), "max_word_overlap_train": copying.get("max_word_overlap_train"),
            "set_to_train_cosine": r["nearest"]["set_to_train_cosine"],
            **{f"{name}_auc": m["auc"] for name, m in membership.items()}}


def run_suite(suite: Suite, out: str | Path, device: str = "cpu", shard: tuple[int, int] = (0, 1),
              progress: bool = True, distill_only: bool = False, ray: str | None = None,
              cpus_per_cell: int = 1, workers: int = 1) -> dict:
    """Run (or resume) every cell of this shard, then write ``results.json`` from all finished cells.

    ``distill_only`` saves the distilled sets and evaluates nothing: a later run (on another machine, with the
    ``sets/`` folder) evaluates them without distilling again. ``ray`` runs the cells as Ray tasks ("local"
    starts a Ray instance on this machine; otherwise the address of a cluster to join), ``cpus_per_cell`` CPUs
    each (and a GPU each on ``cuda``); ``workers`` runs them in that many processes on this machine, sharing its
    cores. Either way the driver writes every finished cell exactly as a serial run would.
    """
    if workers < 1 or (ray and workers > 1):
        raise ConfigError(f"workers must be at least 1 (got {workers}), and 1 with ray (its tasks are the workers)")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if workers > cores:  # more processes than cores only share them, each slower (7 on 2 cores: 5x the time)
        print(f"note: --workers {workers} is more than the {cores} cores this process may use; running {cores}",
              file=sys.stderr)
        workers = cores
    from .learners import get_learner
    from .measure import environment

    check_device(device)
    for name in {*suite.learners, *map(suite.learner_of, suite.methods)}:
        get_learner(name)  # an unknown learner fails here, not after hours of cells
    out = Path(out)
    claim_out(out, suite)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    index, count = shard
    mine = [c for i, c in enumerate(plan(suite)) if i % count == index]
    todo = [c for c in mine if read_cell(out / "cells" / f"{c.key(suite)}.json", "it is run again") is None]
    env = environment()
    costs = CostModel()
    for c in mine:
        doc = None if c in todo else read_cell(out / "cells" / f"{c.key(suite)}.json", "")
        if doc is not None:
            costs.add(c, suite, doc)
    if progress:
        print(f"bench {suite.name}: {len(mine)} cells{' in this shard' if count > 1 else ''}, "
              f"{len(mine) - len(todo)} finished, {len(todo)} to run; {costs.describe(todo, suite)}",
              file=sys.stderr)
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"bench {suite.name}", unit="cell",
               disable=not progress)

    def finish(cell: Cell, records: list[dict] | None, seconds: float) -> None:
        if records is not None:
            doc = {"key": cell.key(suite), "cell": cell.describe(suite), "environment": env, "device": device,
                   **({"workers": workers} if workers > 1 else {}),  # its seconds are one worker's, cores shared
                   "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                   "seconds": round(seconds, 1), "records": records}
            atomic_write(out / "cells" / f"{doc['key']}.json", lambda p: p.write_text(json.dumps(doc, indent=1)))
            costs.add(cell, suite, doc)
        bar.update()

    remaining = list(todo)  # parallel runs finish cells out of order

    def status() -> None:  # what runs next (all that is left, in parallel) and the estimate of the rest
        if not remaining:  # not the last estimate, frozen on the finished bar
            bar.set_postfix_str("every cell finished")
            return
        left = costs.estimate(remaining, suite)[0]
        now = f"{len(remaining)} cells queued or running" if ray or workers > 1 else remaining[0].describe(suite)
        bar.set_postfix_str(now + (f"; about {duration(left)} left" if left else ""))

    run = run_on_ray(ray, cpus_per_cell) if ray else run_in_processes(workers) if workers > 1 else run_here
    if remaining:
        status()
    for cell, records, seconds in run(suite, out, device, todo, distill_only):
        remaining.remove(cell)
        finish(cell, records, seconds)
        status()
    bar.close()
    return collect(suite, out)


def run_cell(suite: Suite, out: str | Path, device: str, cell: Cell, distill_only: bool,
             runner: "Runner | None" = None) -> tuple[Cell, list[dict] | None, float]:
    """One cell: its records and seconds (None records for a distill-only cell: its set is saved, no more)."""
    runner = runner or Runner(suite, out, device)
    start = time.time()
    if distill_only:
        if cell.entry is not None:
            runner.distilled(cell)
        return cell, None, time.time() - start
    return cell, runner.run_cell(cell), time.time() - start


def run_here(suite: Suite, out: Path, device: str, todo: list[Cell], distill_only: bool):
    runner = Runner(suite, out, device)  # tasks and learners loaded once for every cell
    for cell in todo:
        yield run_cell(suite, out, device, cell, distill_only, runner)


def run_in_processes(workers: int):
    """Cells in ``workers`` processes on this machine, handed out as processes free up, each holding torch to
    its share of the cores. Small models on small batches use 2 cores poorly: one 2-thread MiniLM run on MR at
    10 per class trained at 0.84 s a step, two 1-thread runs side by side at 1.01 and 1.09 s each (1.6 times
    the work per second); on BBC's 50 articles of 128 tokens 4.7 s, and 7.8 and 8.2 s (1.2 times; timed with
    benchmarks/threads.py, docs/results.md). A cell that
    fails lets the running ones finish (they are kept) and drops those not yet handed out (the pool hands out
    one more than it has processes: that one runs too), then its error is raised."""
    import multiprocessing
    import signal
    from concurrent.futures import ProcessPoolExecutor, as_completed

    def in_processes(suite: Suite, out: Path, device: str, todo: list[Cell], distill_only: bool):
        if not todo:
            return
        import threading

        import torch

        threads = max(1, torch.get_num_threads() // workers)
        # SIGTERM ends the driver through Python (not at once), so that leaving the pool stops the workers too
        main = threading.current_thread() is threading.main_thread()  # only the main thread may set a handler
        before = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM)) if main else None
        pool, failed = None, None
        try:
            # a worker that dies (out of memory, say) breaks the pool with an error instead of a hang
            pool = ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"), _start_worker,
                                       (suite, str(out), device, threads, os.getpid()))
            futures = [pool.submit(_worker_cell, cell, distill_only) for cell in todo]
            for future in as_completed(futures):
                if future.cancelled():
                    continue
                try:
                    result = future.result()
                except Exception as e:  # noqa: BLE001  the other running cells finish and are kept, then it raises
                    failed = failed or e
                    for other in futures:
                        other.cancel()  # the queued ones
                    continue
                yield result
            if failed is not None:
                raise failed
        finally:
            if pool is not None:
                for process in list((getattr(pool, "_processes", None) or {}).values()):  # running cells stop too
                    process.terminate()
                pool.shutdown(wait=False, cancel_futures=True)
            if main:
                signal.signal(signal.SIGTERM, before if before is not None else signal.SIG_DFL)

    return in_processes


_worker: "Runner | None" = None  # a pool process's runner: tasks and learners loaded once for all its cells


def _follow_parent(parent: int) -> None:
    """End this worker when its driver ends, even by kill -9 (no cleanup of the driver's runs then), rather than
    idle on with its models in memory: the kernel's parent-death signal on Linux, and a thread that watches the
    parent's id (anywhere; also a parent that died before the signal was asked for)."""
    import threading

    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass  # the watchdog alone

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, name="follow-parent", daemon=True).start()


def _start_worker(suite: Suite, out: str, device: str, threads: int, parent: int) -> None:
    global _worker
    _follow_parent(parent)
    import torch
    import tqdm.std

    torch.set_num_threads(threads)
    _worker = Runner(suite, out, device)
    # the workers' progress bars would interleave (the driver's bar counts cells): every bar of this process off,
    # also those asked for explicitly
    shown = tqdm.std.tqdm.__init__

    def quiet(self, *args, **kwargs):
        shown(self, *args, **{**kwargs, "disable": True})

    tqdm.std.tqdm.__init__ = quiet


def _worker_cell(cell: Cell, distill_only: bool) -> tuple[Cell, list[dict] | None, float]:
    assert _worker is not None
    return run_cell(_worker.suite, _worker.out, _worker.device, cell, distill_only, _worker)


def run_on_ray(address: str, cpus_per_cell: int):
    """Cells as Ray tasks, yielded as they finish. Ray is an optional extra: its absence is a clear error."""
    try:
        import ray
    except ImportError:
        raise ConfigError("bench --ray needs Ray: pip install 'textdistill[ray]'") from None

    def on_ray(suite: Suite, out: Path, device: str, todo: list[Cell], distill_only: bool):
        if not todo:
            return
        started = not ray.is_initialized()
        if started:  # the workers see this process's cache and offline settings
            env = {k: v for k, v in os.environ.items() if k.startswith(("TEXTDISTILL_", "HF_"))}
            ray.init(address=None if address == "local" else address, runtime_env={"env_vars": env},
                     include_dashboard=False, log_to_driver=False)
        task = ray.remote(num_cpus=cpus_per_cell, num_gpus=1 if device.startswith("cuda") else 0)(ray_cell)
        try:
            pending = {task.remote(suite, str(out), device, cell, distill_only, cpus_per_cell): cell
                       for cell in todo}
            while pending:
                (done,), _ = ray.wait(list(pending), num_returns=1)
                pending.pop(done)
                result = ray.get(done)
                check_set_visible(suite, out, result[0])
                yield result
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            if started:
                ray.shutdown()

    return on_ray


def check_set_visible(suite: Suite, out: Path, cell: Cell) -> None:
    """A Ray worker saves its cell's set under OUT on its own node: the driver must see it there, or the
    suite's sets would be scattered over the nodes' disks."""
    if cell.entry is None:
        return
    name = f"*-{suite.methods[cell.entry].label}-{cell.dpc}-s{cell.set_seed}"
    if not any((Path(out) / "sets").glob(name)):
        raise ConfigError(f"bench --ray: a worker saved the set {name} under {out} on its own node, and this "
                          "driver does not see it there: --out must be a folder that every Ray node shares "
                          "(a network filesystem)")


def ray_cell(suite: Suite, out: str, device: str, cell: Cell, distill_only: bool, threads: int):
    """A cell in a Ray worker, with torch held to the CPUs Ray granted it."""
    import torch

    torch.set_num_threads(threads)
    return run_cell(suite, out, device, cell, distill_only)


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
        label, count = suite.methods[cell.entry].label, {}
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
            entry = suite.methods[cell.entry]
            if not self.distill:  # only full-data cells so far
                total, unmeasured = total + statistics.median(every_full), unmeasured + 1
                continue
            distill = (self.distill.get((task, entry.label, cell.dpc))
                       or [s for (t, m, _), v in self.distill.items() if (t, m) == (task, entry.label) for s in v]
                       or [s for (_, m, _), v in self.distill.items() if m == entry.label for s in v])
            unmeasured += not distill
            guess = {"text": suite.seeds * len(suite.learners) * (2 if entry.decode else 1)}
            total += statistics.fmean(distill) if distill else statistics.median(
                [s for v in self.distill.values() for s in v])
            runs = self.count.get(entry.label, guess)
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


def _owner(out: Path, suite: Suite) -> None:
    """Refuse an OUT whose suite.json names another suite: two suites in one folder would share results.json and
    the report, and each run would print that report as its own."""
    path = out / "suite.json"
    try:
        owner = json.loads(path.read_text())["name"]
    except FileNotFoundError:
        return
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"{path}: unreadable ({type(e).__name__}), so whose results {out} holds is unknown; "
                          "give another --out") from None
    if owner != suite.name:
        raise ConfigError(f"{out} holds suite {owner}'s results ({path}); give suite {suite.name} another --out")


def claim_out(out: Path, suite: Suite) -> None:
    """Write ``OUT/suite.json`` for ``suite``, refusing an OUT that holds another suite (``_owner``). The first
    run creates the file in one step that fails if it exists, so two suites started at once into one new OUT
    cannot both take it; the same suite (resumed, sharded, with overrides) writes its current form."""
    import tempfile

    from .cache import follow_umask

    out.mkdir(parents=True, exist_ok=True)
    path, text = out / "suite.json", json.dumps(suite.to_dict(), indent=1)
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        follow_umask(Path(tmp))
        try:
            os.link(tmp, path)  # whole, and only if absent
            return
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links: an exclusive create, then the text
            try:
                with open(path, "x") as f:
                    f.write(text)
                return
            except FileExistsError:
                pass
    finally:
        os.unlink(tmp)
    _owner(out, suite)
    atomic_write(path, lambda p: p.write_text(text))


def read_cell(path: Path, then: str) -> dict | None:
    """A finished cell, or None when absent; a damaged one (a killed copy, a full disk) is warned about, not fatal."""
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
        if isinstance(doc, dict) and isinstance(doc.get("records"), list) and isinstance(doc.get("environment"), dict):
            return doc
        why = "not a cell"
    except (OSError, ValueError) as e:
        why = e.__class__.__name__
    print(f"warning: {path}: unreadable cell ({why}); {then}", file=sys.stderr)
    return None


def collect(suite: Suite, out: str | Path) -> dict:
    """``results.json``: the suite, the environment, and every finished cell's records in plan order."""
    out = Path(out)
    _owner(out, suite)  # --report-only would replace another suite's results
    records, missing, envs, docs = [], [], [], []
    for cell in plan(suite):
        doc = read_cell(out / "cells" / f"{cell.key(suite)}.json", "it counts as missing")
        if doc is None:
            missing.append(cell.describe(suite))
            continue
        docs.append(doc)
        records += [{**r, "device": doc.get("device", "cpu")} for r in doc["records"]]
        if doc["environment"] not in envs:
            envs.append(doc["environment"])
    results = {"suite": suite.to_dict(), "environments": envs, "records": records, "missing": missing,
               "cost": suite_cost(docs)}
    atomic_write(out / "results.json", lambda p: p.write_text(json.dumps(results, indent=1)))
    return results
