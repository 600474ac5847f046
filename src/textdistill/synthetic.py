"""DistilledDataset: the artifact every method returns, saved as manifest.json + tensors.safetensors + data.jsonl.

Loading reads JSON and safetensors only (never a pickle). Saving writes a temp dir, then renames it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from safetensors.torch import load_file, save_file

from .errors import ArtifactError

if TYPE_CHECKING:
    from datasets import Dataset

    from .learners import Learner

FORMAT = "textdistill.distilled/1"
KINDS = ("text", "token-embeddings", "features", "generator")


def _version() -> str:
    from . import __version__

    return __version__


@dataclass
class DistilledDataset:
    kind: str
    labels: torch.Tensor  # long [n] (hard) or float [n, C] (soft)
    label_names: list[str]
    texts: list[str] | None = None
    text_pairs: list[str] | None = None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # inputs_embeds, attention_mask, features
    lrs: torch.Tensor | None = None  # one learned learning rate per training step
    attention_labels: torch.Tensor | None = None
    learner: dict | None = None  # the learner a model-bound set belongs to (id, revision, tokenizer, max_length)
    method: str = ""
    config: dict = field(default_factory=dict)
    seed: int = 0
    task: dict = field(default_factory=dict)  # name, fingerprint, spec, how to load it again
    recipe: dict | None = None  # how to train on it; None: the learner's default
    source_indices: list[int] | None = None  # rows of the training split a coreset picked
    log: dict = field(default_factory=dict)  # what the method measured on the way (e.g. its loss curve)
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    version: str = field(default_factory=_version)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ArtifactError(f"kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if self.kind == "text" and (self.texts is None or len(self.texts) != len(self.labels)):
            raise ArtifactError("a text set needs one text per label")
        if self.kind in ("token-embeddings", "features") and not self.learner:
            raise ArtifactError(f"a {self.kind} set must record the learner it is bound to")

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
        bound = (self.learner or {}).get("id")
        if bound != learner.name:
            raise ArtifactError(f"this {self.kind} set is bound to learner {bound!r} and cannot train {learner.name!r}; "
                                "decode it to text first, or evaluate it with its own learner")
        return dict(self.tensors)

    def to_dataset(self) -> "Dataset":
        """A text set as a ``datasets.Dataset`` with a ClassLabel."""
        from datasets import ClassLabel, Dataset, Features, Value

        if self.kind != "text":
            raise ArtifactError(f"only a text set converts to a datasets.Dataset (this one is {self.kind!r})")
        cols: dict[str, Any] = {"text": self.texts, "label": self.hard_labels.tolist()}
        feats = {"text": Value("string"), "label": ClassLabel(names=self.label_names)}
        if self.text_pairs is not None:
            cols["text_pair"], feats["text_pair"] = self.text_pairs, Value("string")
        return Dataset.from_dict(cols, features=Features(feats))

    # -- persistence -----------------------------------------------------------------------------
    def _tensor_dict(self) -> dict[str, torch.Tensor]:
        out = {"labels": self.labels, **{f"examples.{k}": v for k, v in self.tensors.items()}}
        if self.lrs is not None:
            out["lrs"] = self.lrs
        if self.attention_labels is not None:
            out["attention_labels"] = self.attention_labels
        return {k: v.detach().contiguous().cpu() for k, v in out.items()}

    def manifest(self) -> dict:
        return {
            "format": FORMAT, "kind": self.kind, "size": len(self), "label_names": self.label_names,
            "soft_labels": self.labels.dtype != torch.long, "learner": self.learner, "method": self.method,
            "config": self.config, "seed": self.seed, "task": self.task, "recipe": self.recipe,
            "source_indices": self.source_indices, "log": self.log, "created": self.created, "version": self.version,
        }

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        path = Path(path)
        if path.exists() and not overwrite:
            raise ArtifactError(f"{path} exists; choose another --out or pass overwrite")
        return write_folder(path, self.write_files)

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
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise ArtifactError(f"{files[0]}: format {m.get('format') if isinstance(m, dict) else None!r} "
                                f"is not {FORMAT!r}")
        try:
            tensors = load_file(str(files[1]))
        except Exception as e:  # safetensors raises its own error types
            raise ArtifactError(f"{files[1]}: unreadable safetensors ({e})") from None
        rows = []
        for n, line in enumerate(files[2].read_text().splitlines(), start=1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise ArtifactError(f"{files[2]}:{n}: not valid JSON") from None
        if "labels" not in tensors or len(rows) != m.get("size") or tensors["labels"].shape[0] != m.get("size"):
            raise ArtifactError(f"{path}: manifest size {m.get('size')}, {len(rows)} rows in data.jsonl and "
                                f"{tensors.get('labels', torch.empty(0)).shape[0]} labels disagree")
        texts = [r["text"] for r in rows] if rows and "text" in rows[0] else None
        pairs = [r["text_pair"] for r in rows] if rows and "text_pair" in rows[0] else None
        try:
            return cls(
                kind=m["kind"], labels=tensors["labels"], label_names=m["label_names"], texts=texts, text_pairs=pairs,
                tensors={k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("examples.")},
                lrs=tensors.get("lrs"), attention_labels=tensors.get("attention_labels"), learner=m["learner"],
                method=m["method"], config=m["config"], seed=m["seed"], task=m["task"], recipe=m["recipe"],
                source_indices=m.get("source_indices"), log=m.get("log", {}), created=m["created"],
                version=m["version"],
            )
        except KeyError as e:
            raise ArtifactError(f"{files[0]}: missing field {e}") from None


def write_folder(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Fill a temporary sibling folder with ``write``, then rename it to ``path`` (replacing it): no half-written folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        write(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
