"""DistilledDataset: the artifact every method returns, saved as manifest.json + tensors.safetensors + data.jsonl.

Loading reads JSON and safetensors only (never a pickle). Saving writes a temp dir, then renames it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import reprlib
import os
import shutil
import stat
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from safetensors.torch import load_file, save_file

from .atomic import temp_folder
from .errors import ArtifactError
from .recipe import ATTENTION_KL

if TYPE_CHECKING:
    from datasets import Dataset

    from .learners import Learner

FORMAT = "textdistill.distilled/3"
# /2 kept attention labels in a tensor of their own, example weights as the masses of the soft label rows, the weight
# of the attention term in the recipe and the provenance in the log; /1 also had one `learner` field for both
# bound_to and made_with. Both load, as the third format holds them.
FORMAT_2, FORMAT_1 = "textdistill.distilled/2", "textdistill.distilled/1"
FORMATS = (FORMAT, FORMAT_2, FORMAT_1)
KINDS = ("text", "token-embeddings", "features", "generator")


def _version() -> str:
    from .version import __version__

    return __version__


@dataclass
class Provenance:
    """What the tools that made a set record about how it was made, and read back (the method's own measurements,
    e.g. its loss curve, stay in ``DistilledDataset.log``). Each field is None where it does not apply."""

    distill_step: dict | None = None  # wall time and peak memory of the distillation (measure.Meter.result())
    data_parallel_work: list[int] | None = None  # what each rank took under torchrun (distributed.work_per_rank())
    set_key: str | None = None  # the bench configuration the set was made for: a resumed bench reuses only its own
    dp: dict | None = None  # the differential-privacy mechanism and its accounting (privacy.plan())
    fidelity: dict | None = None  # a set written from target vectors: how close its texts came to them (embed-invert)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, where: Path, values: dict) -> "Provenance":
        """The manifest's provenance, each record of the type and with the entries its readers use."""
        unknown = sorted(set(values) - set(PROVENANCE))
        if unknown:
            raise ArtifactError(f"{where}: unknown provenance {unknown}; known: {', '.join(PROVENANCE)}")
        for name, value in values.items():
            ok, expected = PROVENANCE[name]
            if value is not None and not ok(value):
                raise ArtifactError(f"{where}: provenance {name!r} must be {expected}, got {reprlib.repr(value)}")
        return cls(**values)


def _record(**entries: type | tuple[type, ...]) -> Callable[[Any], bool]:
    """A mapping with at least these entries, of these types (a bool is no number)."""
    return lambda v: isinstance(v, dict) and all(
        isinstance(v.get(k), t) and not isinstance(v.get(k), bool) for k, t in entries.items())


_NUMBER = (int, float)
PROVENANCE: dict[str, tuple[Callable[[Any], bool], str]] = {
    "distill_step": (_record(seconds=_NUMBER), "a mapping with the seconds it took"),
    "data_parallel_work": (lambda v: isinstance(v, list) and all(_is_int(x) for x in v),
                           "a list of counts, one per rank"),
    "set_key": (lambda v: isinstance(v, str), "a string"),
    "dp": (_record(epsilon=_NUMBER, delta=_NUMBER, steps=int, noise_multiplier=_NUMBER, clip=_NUMBER, mechanism=str),
           "a mapping with epsilon, delta, steps, noise_multiplier, clip and mechanism"),
    "fidelity": (_record(mean_cosine_to_target=_NUMBER, mean_nearest_real_cosine=_NUMBER),
                 "a mapping with mean_cosine_to_target and mean_nearest_real_cosine"),
}


@dataclass
class DistilledDataset:
    kind: str
    labels: torch.Tensor  # long [n] (hard) or float [n, C] (soft: class distributions, or bptt's unrestricted rows)
    label_names: list[str]
    texts: list[str] | None = None
    text_pairs: list[str] | None = None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # inputs_embeds, attention_mask, features
    lrs: torch.Tensor | None = None  # one learned learning rate per training step
    # Named tensors of one row per example beside the labels, which the training loss reads: `weights` (float [n],
    # each example's weight) and `attention_labels` ([n, layers, heads, L(, L)]); a new one needs no new field.
    per_example: dict[str, torch.Tensor] = field(default_factory=dict)
    bound_to: dict | None = None  # a model-bound set: the learner it trains (id, max_length, ...); text sets: None
    made_with: dict | None = None  # the learner whose space the method worked in (every set)
    method: str = ""
    config: dict = field(default_factory=dict)
    seed: int = 0
    task: dict = field(default_factory=dict)  # name, fingerprint, spec, how to load it again
    recipe: dict | None = None  # how to train on it; None: the learner's default
    source_indices: list[int] | None = None  # rows of the training split a coreset picked
    log: dict = field(default_factory=dict)  # what the method measured on the way (e.g. its loss curve)
    provenance: Provenance = field(default_factory=Provenance)  # what the tools record and read back
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    version: str = field(default_factory=_version)
    path: Path | None = field(default=None, repr=False, compare=False)  # the folder it was loaded from, for errors

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ArtifactError(f"kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if self.kind == "text" and (self.texts is None or len(self.texts) != len(self.labels)):
            raise ArtifactError("a text set needs one text per label")
        if self.kind in ("token-embeddings", "features") and not self.bound_to:
            raise ArtifactError(f"a {self.kind} set must record the learner it is bound to")
        where = self.path / "tensors.safetensors" if self.path is not None else f"this {self.kind} set"
        _check_per_example(where, self.per_example, len(self.labels))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def hard_labels(self) -> torch.Tensor:
        return self.labels if self.labels.dtype == torch.long else self.labels.argmax(-1)

    def fingerprint(self) -> str:
        """Content hash: evaluation caches are keyed by it."""
        h = hashlib.sha256(json.dumps([self.kind, self.texts, self.text_pairs, self.recipe]).encode())
        for name, t in sorted(self._tensor_dict().items()):
            h.update(name.encode())
            h.update(t.detach().contiguous().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    # -- training inputs -------------------------------------------------------------------------
    def inputs_for(self, learner: "Learner") -> dict[str, torch.Tensor]:
        """Model inputs for ``learner``; a model-bound set refuses a learner it is not bound to."""
        if self.kind == "text":
            return learner.encode(self.texts, self.text_pairs)  # type: ignore[arg-type]
        if self.kind == "generator":
            raise ArtifactError("a generator set holds a model, not examples: generate a text set from it first")
        bound = (self.bound_to or {}).get("id")
        if bound != learner.name:
            raise ArtifactError(f"this {self.kind} set is bound to learner {bound!r} and cannot train {learner.name!r}; "
                                "decode it to text first, or evaluate it with its own learner")
        self.check_inputs(learner)
        return dict(self.tensors)

    def check_inputs(self, learner: "Learner") -> None:
        """The example tensors of a token-embedding or features set have the shapes ``learner`` reads: a crafted
        or damaged set stops here, naming the file, the tensor and both widths, not deep inside a forward."""
        if self.kind not in ("token-embeddings", "features"):
            return
        where = self.path / "tensors.safetensors" if self.path is not None else f"this {self.kind} set"
        vectors, dims = ("features", 2) if self.kind == "features" else ("inputs_embeds", 3)
        for name, want in ((vectors, dims), *((("attention_mask", 2),) if self.kind == "token-embeddings" else ())):
            t = self.tensors.get(name)
            if t is None or t.dim() != want:
                got = "is missing" if t is None else f"has shape {list(t.shape)}"
                raise ArtifactError(f"{where}: tensor examples.{name} {got}; a {self.kind} set needs {want} dimensions")
        t = self.tensors[vectors]
        if not t.dtype.is_floating_point:
            raise ArtifactError(f"{where}: tensor examples.{vectors} holds {t.dtype}, expected floating-point vectors")
        width = learner.input_width()
        if width is not None and t.shape[-1] != width:
            raise ArtifactError(f"{where}: tensor examples.{vectors} has width {t.shape[-1]}, but learner "
                                f"{learner.name!r} reads vectors of width {width}")
        for name in ("attention_mask", "token_type_ids"):
            other = self.tensors.get(name)
            if self.kind == "token-embeddings" and other is not None and other.shape != t.shape[:2]:
                raise ArtifactError(f"{where}: tensor examples.{name} has shape {list(other.shape)}, but "
                                    f"examples.inputs_embeds has {list(t.shape[:2])} positions")

    def check_task(self, task) -> None:
        """Refuse a task whose classes are not the set's: every number computed on it would be about another task."""
        if list(self.label_names) != list(task.spec.classes):
            where = f"{self.path}: " if self.path is not None else ""
            raise ArtifactError(f"{where}the set has classes {list(self.label_names)} but task {task.name} has "
                                f"{list(task.spec.classes)}: use the task it was distilled from")

    @property
    def label_weights(self) -> torch.Tensor | None:
        """Each example's weight in the training loss (the ``weights`` per-example tensor: learned-labels --learn
        weights|both), or None: every example counts once."""
        return self.per_example.get("weights")

    @property
    def attention_labels(self) -> torch.Tensor | None:
        """The target attention of each example (attention-labels), or None."""
        return self.per_example.get("attention_labels")

    def to_dataset(self) -> "Dataset":
        """A text set as a ``datasets.Dataset`` with a ClassLabel."""
        from datasets import ClassLabel, Dataset, Features, Sequence, Value

        if self.kind != "text":
            raise ArtifactError(f"only a text set converts to a datasets.Dataset (this one is {self.kind!r})")
        cols: dict[str, Any] = {"text": self.texts, "label": self.hard_labels.tolist()}
        feats = {"text": Value("string"), "label": ClassLabel(names=self.label_names)}
        if self.text_pairs is not None:
            cols["text_pair"], feats["text_pair"] = self.text_pairs, Value("string")
        if self.labels.dim() == 2:  # teacher or learned labels: the distribution beside its argmax
            cols["soft_label"], feats["soft_label"] = self.labels.tolist(), Sequence(Value("float32"))
        if self.label_weights is not None:  # learned example weights, for frameworks that read sample weights
            cols["weight"], feats["weight"] = self.label_weights.tolist(), Value("float32")
        return Dataset.from_dict(cols, features=Features(feats))

    def push_to_hub(self, repo_id: str, **kwargs) -> Any:
        """Publish a text set as a Hugging Face dataset (``datasets.Dataset.push_to_hub``; kwargs pass through,
        e.g. ``private=True``, ``token=...``)."""
        return self.to_dataset().push_to_hub(repo_id, **kwargs)

    # -- persistence -----------------------------------------------------------------------------
    def _tensor_dict(self) -> dict[str, torch.Tensor]:
        out = {"labels": self.labels, **{f"examples.{k}": v for k, v in self.tensors.items()}}
        if self.lrs is not None:
            out["lrs"] = self.lrs
        out.update({f"per_example.{k}": v for k, v in self.per_example.items()})
        return {k: v.detach().contiguous().cpu() for k, v in out.items()}

    def manifest(self) -> dict:
        return {
            "format": FORMAT, "kind": self.kind, "size": len(self), "label_names": self.label_names,
            "soft_labels": self.labels.dtype != torch.long, "per_example": sorted(self.per_example),
            "bound_to": self.bound_to, "made_with": self.made_with, "method": self.method,
            "config": self.config, "seed": self.seed, "task": self.task, "recipe": self.recipe,
            "source_indices": self.source_indices, "provenance": self.provenance.to_dict(), "log": self.log,
            "created": self.created, "version": self.version,
        }

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        return write_folder(path, self.write_files, overwrite=overwrite)

    def write_files(self, folder: Path) -> None:
        """The three files of the set, into an existing folder."""
        (folder / "manifest.json").write_text(json.dumps(self.manifest(), indent=1))
        save_file(self._tensor_dict(), str(folder / "tensors.safetensors"))
        with open(folder / "data.jsonl", "w") as f:
            hard = self.hard_labels.tolist()
            for i in range(len(self)):
                row: dict[str, Any] = {"index": i, "label": self.label_names[hard[i]]}
                if self.texts is not None:
                    row["text"] = self.texts[i]
                if self.text_pairs is not None:
                    row["text_pair"] = self.text_pairs[i]
                f.write(json.dumps(row) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "DistilledDataset":
        path = Path(path)
        files = [path / n for n in ("manifest.json", "tensors.safetensors", "data.jsonl")]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise ArtifactError(f"{path} is not a distilled set: missing {', '.join(missing)}")
        try:
            m = json.loads(files[0].read_text())
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{files[0]}: not valid JSON ({e.msg}, line {e.lineno})") from None
        except (OSError, ValueError) as e:
            raise ArtifactError(f"{files[0]}: unreadable ({e.__class__.__name__})") from None
        if not isinstance(m, dict) or m.get("format") not in FORMATS:
            raise ArtifactError(f"{files[0]}: format {m.get('format') if isinstance(m, dict) else None!r} "
                                f"is not {FORMAT!r}")
        _check_manifest(files[0], m)
        if m["format"] == FORMAT_1:  # the first format's one learner field: bound to it, or made in its space
            bound = m["kind"] in ("token-embeddings", "features")
            m = {**m, "bound_to": m["learner"] if bound else None, "made_with": m["learner"]}
        try:
            tensors = load_file(str(files[1]))
        except Exception as e:  # safetensors raises its own error types
            raise ArtifactError(f"{files[1]}: unreadable safetensors ({e})") from None
        rows = []
        try:
            lines = files[2].read_text().splitlines()
        except (OSError, ValueError) as e:
            raise ArtifactError(f"{files[2]}: unreadable ({e.__class__.__name__})") from None
        for n, line in enumerate(lines, start=1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise ArtifactError(f"{files[2]}:{n}: not valid JSON") from None
            if not isinstance(rows[-1], dict):
                raise ArtifactError(f"{files[2]}:{n}: expected a JSON object")
        if "labels" not in tensors or len(rows) != m["size"] or tensors["labels"].shape[0] != m["size"]:
            raise ArtifactError(f"{path}: manifest size {m['size']}, {len(rows)} rows in data.jsonl and "
                                f"{tensors.get('labels', torch.empty(0)).shape[0]} labels disagree")
        _check_tensors(files[1], tensors, m)
        if m["format"] != FORMAT:
            m, tensors = _as_third_format(m, tensors)
        provenance = Provenance.from_dict(files[0], m.get("provenance", {}))
        texts, pairs = _text_column(files[2], rows, "text"), _text_column(files[2], rows, "text_pair")
        try:
            return cls(
                path=path,
                kind=m["kind"], labels=tensors["labels"], label_names=m["label_names"], texts=texts, text_pairs=pairs,
                tensors={k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("examples.")},
                lrs=tensors.get("lrs"), bound_to=m["bound_to"], made_with=m.get("made_with"),
                per_example={k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("per_example.")},
                method=m["method"], config=m["config"], seed=m["seed"], task=m["task"], recipe=m["recipe"],
                source_indices=m.get("source_indices"), log=m.get("log", {}),
                provenance=provenance, created=m["created"], version=m["version"],
            )
        except ArtifactError as e:
            raise ArtifactError(f"{files[0]}: {e}") from None

    def bound_learner(self) -> str:
        """The id of the learner a model-bound set records. A manifest never makes us load a model from a local
        path (a crafted set could name any folder): such a learner is given on the command line instead."""
        from .learners import LEARNERS

        lid = (self.bound_to or {}).get("id")
        if not isinstance(lid, str) or not lid:
            raise ArtifactError(f"this {self.kind} set records no learner id")
        if lid in LEARNERS:
            return lid
        parts = lid.split("/")
        if (os.path.isabs(lid) or lid.startswith((".", "~")) or "\\" in lid or len(parts) > 2 or "" in parts
                or Path(lid).exists()):
            raise ArtifactError(f"the set names learner {lid!r}, a local path; a model is never loaded from a path a "
                                "manifest names: use a registered learner or a hub id")
        return lid


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _learner_record(v: Any) -> bool:
    return v is None or (isinstance(v, dict) and isinstance(v.get("id"), str))


# Every manifest field the loader and its users read: (check, what it must be); source_indices and log may be absent.
_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "kind": (lambda v: isinstance(v, str) and v in KINDS, f"one of {', '.join(KINDS)}"),
    "size": (lambda v: _is_int(v) and v >= 0, "a count of examples"),
    "label_names": (lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(x, str) for x in v)
                    and len(set(v)) == len(v), "a non-empty list of distinct class names (strings)"),
    "bound_to": (_learner_record, "null or a mapping with a string 'id'"),
    "made_with": (_learner_record, "null or a mapping with a string 'id'"),
    "method": (lambda v: isinstance(v, str), "a string"),
    "config": (lambda v: isinstance(v, dict), "a mapping"),
    "seed": (_is_int, "an integer"),
    "task": (lambda v: isinstance(v, dict), "a mapping"),
    "recipe": (lambda v: v is None or isinstance(v, dict), "null or a mapping"),
    "source_indices": (lambda v: v is None or (isinstance(v, list) and all(_is_int(i) for i in v)),
                       "null or a list of row numbers"),
    "log": (lambda v: isinstance(v, dict), "a mapping"),
    "provenance": (lambda v: isinstance(v, dict), "a mapping"),
    "per_example": (lambda v: isinstance(v, list) and all(isinstance(x, str) and x for x in v)
                    and len(set(v)) == len(v), "a list of distinct tensor names"),
    "created": (lambda v: isinstance(v, str), "a string"),
    "version": (lambda v: isinstance(v, str), "a string"),
}


def _check_manifest(where: Path, m: dict) -> None:
    # the first format named its one learner record `learner`; bound_to and made_with replace it
    first = m.get("format") == FORMAT_1
    fields = {**_FIELDS, "learner": _FIELDS["bound_to"]} if first else _FIELDS
    for name, (ok, expected) in fields.items():
        if first and name in ("bound_to", "made_with"):
            continue
        if name not in m:
            if name not in ("source_indices", "log", "made_with", "provenance", "per_example"):
                raise ArtifactError(f"{where}: missing field {name!r} ({expected})")
        elif not ok(m[name]):
            raise ArtifactError(f"{where}: field {name!r} must be {expected}, got {reprlib.repr(m[name])}")


def _check_tensors(where: Path, tensors: dict[str, torch.Tensor], m: dict) -> None:
    """Labels index label_names (or are soft labels over them); the example tensors hold one row per example."""
    labels, n = tensors["labels"], len(m["label_names"])
    if labels.dtype == torch.long and labels.dim() == 1:
        if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < n:
            raise ArtifactError(f"{where}: labels run from {int(labels.min())} to {int(labels.max())}, but "
                                f"label_names has {n} classes")
    elif not (labels.dtype.is_floating_point and labels.dim() == 2 and labels.shape[1] == n):
        raise ArtifactError(f"{where}: labels must be class ids (int64 [size]) or soft labels (float [size, {n}]), "
                            f"got {labels.dtype} {list(labels.shape)}")
    need = {"token-embeddings": ["inputs_embeds", "attention_mask"], "features": ["features"]}.get(m["kind"], [])
    missing = [k for k in need if f"examples.{k}" not in tensors]
    if missing:
        raise ArtifactError(f"{where}: a {m['kind']} set needs tensors {', '.join('examples.' + k for k in missing)}")
    wrong = [k for k, t in tensors.items() if k.startswith("examples.") and (t.dim() == 0 or t.shape[0] != m["size"])]
    if wrong:
        raise ArtifactError(f"{where}: {', '.join(wrong)} must hold one row per example ({m['size']})")
    if m["format"] == FORMAT:
        held = sorted(k.split(".", 1)[1] for k in tensors if k.startswith("per_example."))
        if held != sorted(m.get("per_example", [])):
            raise ArtifactError(f"{where}: holds per-example tensors {held}, but the manifest lists "
                                f"{sorted(m.get('per_example', []))}")
        per_example = {k: tensors[f"per_example.{k}"] for k in held}
    else:  # the second format's attention labels, under the name the third gives them
        per_example = {k: tensors[k] for k in ("attention_labels",) if k in tensors}
    _check_per_example(where, per_example, m["size"])


def _check_per_example(where: Path | str, per_example: dict[str, torch.Tensor], n: int) -> None:
    """One row per example in every per-example tensor; weights non-negative numbers, attention labels
    distributions over positions (for the CLS row or for every row)."""
    for name, t in per_example.items():
        tensor = f"tensor per_example.{name}"
        if not isinstance(name, str) or not name or not isinstance(t, torch.Tensor):
            raise ArtifactError(f"{where}: per-example tensors are tensors by name, got {name!r}: {type(t).__name__}")
        if t.dim() == 0 or t.shape[0] != n:
            got = "is a scalar" if t.dim() == 0 else f"has {t.shape[0]} rows (shape {list(t.shape)})"
            raise ArtifactError(f"{where}: {tensor} {got}, but the set has {n} examples: one row per example")
        if name == "weights" and not (t.dim() == 1 and t.dtype.is_floating_point and bool(torch.isfinite(t).all())
                                      and bool((t >= 0).all())):
            raise ArtifactError(f"{where}: {tensor} must be one finite non-negative number per example, got "
                                f"{t.dtype} {list(t.shape)}")
        if name == "attention_labels" and not (t.dtype.is_floating_point and t.dim() in (4, 5)):
            raise ArtifactError(f"{where}: {tensor} must be float [n, layers, heads, L] or [n, layers, heads, L, L], "
                                f"got {t.dtype} {list(t.shape)}")


def _row_masses(labels: torch.Tensor) -> torch.Tensor | None:
    """The example weights a second-format set kept as the masses of its soft label rows: non-negative rows whose
    masses are not all 1; None for hard labels, distributions and rows with negative entries (bptt's unrestricted
    labels, which are not distributions)."""
    if labels.dim() != 2 or bool((labels < 0).any()):
        return None
    mass = labels.sum(-1)
    return None if torch.allclose(mass, torch.ones_like(mass), atol=1e-3) else mass


def _as_third_format(m: dict, tensors: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    """A first- or second-format set as the third holds it: attention labels and example weights (the masses of
    the soft label rows, which become distributions) as per-example tensors, the weight of the attention term as the
    recipe's named loss, and the provenance that the log kept."""
    tensors = dict(tensors)
    per_example = {}
    if "attention_labels" in tensors:
        per_example["attention_labels"] = tensors.pop("attention_labels")
    mass = _row_masses(tensors["labels"])
    if mass is not None:  # a row of mass 0 (weight 0) stays as it is: nothing to divide, nothing it trains
        labels = tensors["labels"]
        tensors["labels"] = torch.where(mass[:, None] > 0, labels / mass.clamp_min(1e-30)[:, None], labels)
        per_example["weights"] = mass
    tensors.update({f"per_example.{k}": v for k, v in per_example.items()})
    recipe = m["recipe"]
    if "attention_labels" in per_example:  # the weight applied to them: the recipe's, else the default's (1)
        recipe = {k: v for k, v in (recipe or {}).items() if k != "attention_weight"}
        recipe["loss"] = ATTENTION_KL
        if "attention_weight" in (m["recipe"] or {}):
            recipe["loss_options"] = {"weight": m["recipe"]["attention_weight"]}
    elif recipe is not None and "attention_weight" in recipe:  # a weight with no attention labels applied to none
        recipe = {k: v for k, v in recipe.items() if k != "attention_weight"}
    log = dict(m.get("log", {}))
    provenance = {k: log.pop(k) for k in PROVENANCE if k in log}
    return {**m, "recipe": recipe, "log": log, "provenance": provenance, "per_example": sorted(per_example)}, tensors


def _text_column(where: Path, rows: list[dict], key: str) -> list[str] | None:
    if not rows or key not in rows[0]:
        return None
    for n, row in enumerate(rows, start=1):
        if not isinstance(row.get(key), str):
            raise ArtifactError(f"{where}:{n}: {key!r} must be a string, as in every row")
    return [r[key] for r in rows]


def is_distilled_set(path: Path) -> bool:
    """Whether ``path`` holds a manifest.json of this format: the only folders ``--overwrite`` replaces."""
    try:
        m = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(m, dict) and m.get("format") in FORMATS


def check_output(path: str | Path, overwrite: bool = False) -> Path:
    """Refuse, before any work, an output folder that cannot be written or whose replacement would lose data.

    With ``overwrite`` only an empty folder or a distilled set is replaced; never a file or another folder.
    """
    path = Path(path)
    try:
        st = path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        st = None
    if st is not None:
        if not stat.S_ISDIR(st.st_mode):
            raise ArtifactError(f"{path} exists and is not a directory; choose another --out")
        if not overwrite:
            raise ArtifactError(f"{path} exists; choose another --out or pass --overwrite to replace it")
        if not _replaceable(path):
            raise ArtifactError(f"{path} is not a distilled set (no {FORMAT} manifest.json) and --overwrite only "
                                "replaces one; choose another --out")
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ArtifactError(f"cannot create {path}: {parent} is not a directory")
    try:  # a real probe: os.access says yes to root on read-only or virtual file systems (/proc)
        os.rmdir(tempfile.mkdtemp(dir=parent, prefix=".textdistill-probe-"))
    except OSError as e:
        raise ArtifactError(f"cannot create {path}: {parent} is not writable ({e.strerror})") from None
    return path


def _replaceable(folder: Path) -> bool:
    """An empty folder or a distilled set (or nothing: another writer may have moved it aside meanwhile)."""
    for _ in range(100):
        try:
            inode = folder.lstat().st_ino
            if is_distilled_set(folder) or not any(folder.iterdir()):
                return True
            if folder.lstat().st_ino == inode:
                return False
        except FileNotFoundError:
            return True
        except OSError as e:
            raise ArtifactError(f"{folder}: cannot read it ({e.strerror})") from None
        # another writer swapped the folder while we looked: look again
    return False


def _renameat2() -> Callable | None:
    """Linux's renameat2 from the C library, or None where there is none (other systems, old glibc)."""
    import ctypes

    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


def rename_exclusive(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` only if nothing is at ``dst`` (else FileExistsError), in one step: a plain rename
    of a folder replaces an empty folder there, and a look before it leaves a gap for another writer."""
    import ctypes

    func = _renameat2()
    if func is not None:
        at_cwd, noreplace = -100, 1  # AT_FDCWD, RENAME_NOREPLACE
        if func(at_cwd, os.fsencode(src), at_cwd, os.fsencode(dst), noreplace) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(err, os.strerror(err), str(dst))
        if err not in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # else: no such call on this file system
            raise OSError(err, os.strerror(err), str(dst))
    os.mkdir(dst)  # the claim: exactly one mkdir of a path succeeds
    try:
        os.rename(src, dst)  # onto our own empty folder
    except OSError:
        with contextlib.suppress(OSError):
            os.rmdir(dst)  # only if still empty
        raise


def write_folder(path: str | Path, write: Callable[[Path], None], overwrite: bool = True) -> Path:
    """Fill a temporary sibling folder with ``write``, then rename it to ``path``: no half-written folder.

    Without ``overwrite`` the rename fails if anything appeared at ``path`` meanwhile (two runs saving to one new
    path: one wins, the other is told). With it, only an empty folder or a distilled set is replaced: it is
    renamed aside first and deleted after, so writers racing on one path never fail and the path always holds a
    whole set (for an instant, none).
    """
    path = check_output(path, overwrite=overwrite)
    if not overwrite:
        tmp_new = temp_folder(path, write)
        try:
            rename_exclusive(tmp_new, path)
        except FileExistsError:
            raise ArtifactError(f"{path} appeared while the set was being written (another run saving there?) and "
                                "is kept as it is; choose another --out or pass --overwrite to replace it") from None
        finally:
            shutil.rmtree(tmp_new, ignore_errors=True)  # after a rename there is nothing left to remove
        return path
    tmp: Path | None = temp_folder(path, write)
    aside: list[Path] = []
    try:
        for _ in range(100):
            try:
                os.rename(tmp, path)  # onto nothing or an empty folder
                tmp = None
                return path
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
            aside.append(old)
            try:
                os.rename(path, old)
            except FileNotFoundError:
                continue  # another writer moved it first
            if not _replaceable(old):  # something else appeared there meanwhile: never ours to delete
                aside.pop()
                try:
                    os.rename(old, path)
                except OSError:
                    raise ArtifactError(f"{path} changed while writing; what was there is now {old}") from None
                raise ArtifactError(f"{path} is not a distilled set and --overwrite only replaces one; "
                                    "choose another --out")
        raise ArtifactError(f"{path}: could not replace it, other processes kept writing it")
    finally:
        for folder in [tmp, *aside]:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
