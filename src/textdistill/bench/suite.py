"""A benchmark suite and its YAML schema: tasks x methods x examples per class x learners x seeds, every name,
option and type checked before anything runs (a mistyped suite is one line naming the field)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import yaml

from ..config import to_bool
from ..errors import ConfigError, kind_of


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
    # The learner of the "SetFit on K random examples" row in every table (the suites in benchmarks/ name
    # setfit-minilm): what a user gets without distilling anything, the bar a set must clear. None: no such row;
    # a suite that evaluates with that learner has the row already.
    bar: str | None = None

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
    from ..methods import METHODS, get_method

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
    from ..recipe import Recipe

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
    for key in ("name", "description", "distill_learner", "bar"):
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
