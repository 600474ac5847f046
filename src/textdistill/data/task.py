"""The task: a DatasetDict (train/test, `text`, optional `text_pair`, `label` as ClassLabel, optional `language`)
and its spec."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DataError

if TYPE_CHECKING:  # imported where used: `textdistill list tasks` should not load datasets (and pandas)
    from datasets import Dataset, DatasetDict


@dataclass(frozen=True)
class TaskSpec:
    name: str
    classes: tuple[str, ...]
    max_length: int = 64
    metric: str = "accuracy"
    source: str = ""
    pair: bool = False
    # classification (the default); choice (multiple choice: a question and its choices, judged by a causal LM's
    # log-likelihoods); continuation (prompts a causal LM continues, judged by a classifier of the text it writes)
    kind: str = "classification"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Task:
    spec: TaskSpec
    data: DatasetDict = field(repr=False)
    origin: dict = field(default_factory=dict)  # the get_task arguments that load it again

    def describe(self, private: bool = False) -> dict:
        """What an artifact records about its source task. A ``private`` (differentially private) set records no
        fingerprint: a hash of the training data would let anyone holding a candidate dataset test it exactly."""
        fingerprint = {} if private else {"fingerprint": self.fingerprint}
        return {"name": self.name, **fingerprint, "spec": self.spec.to_dict(), "origin": self.origin}

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def train(self) -> Dataset:
        return self.data["train"]

    @property
    def test(self) -> Dataset:
        return self.data["test"]

    @property
    def num_classes(self) -> int:
        return len(self.spec.classes)

    def columns(self, split: str) -> tuple[list[str], list[str] | None, list[int]]:
        """(texts, pairs or None, labels) of a split as plain lists."""
        ds = self.data[split]
        pairs = list(ds["text_pair"]) if "text_pair" in ds.column_names else None
        return list(ds["text"]), pairs, list(ds["label"])

    def languages(self, split: str) -> list[str] | None:
        """The language of each example of a split (a multilingual task's ``language`` column), or None."""
        ds = self.data[split]
        return list(ds["language"]) if "language" in ds.column_names else None

    @cached_property
    def fingerprint(self) -> str:
        """Content hash of both splits: caches and artifacts are keyed by it."""
        h = hashlib.sha256()
        for split in ("train", "test"):
            ds = self.data[split]
            pairs = ds["text_pair"] if "text_pair" in ds.column_names else [""] * len(ds)
            for text, pair, label in zip(ds["text"], pairs, ds["label"]):
                h.update(f"{split}\x1f{text}\x1f{pair}\x1f{label}\x1e".encode())
            if "language" in ds.column_names:  # only where present: tasks without it keep their fingerprint
                h.update(("\x1d" + "\x1f".join(ds["language"])).encode())
        h.update(repr(self.spec.classes).encode())
        return h.hexdigest()[:16]

    def validation(self, seed: int = 0) -> "Task":
        """The task for choices (hyperparameters, variants): its test split is carved from this task's training
        split (stratified, as large as the test split but at most a fifth of train) and its train is the rest,
        so tuning never reads the test split. ``get_task("NAME:validation")`` loads it by name."""
        from datasets import DatasetDict

        labels = list(self.train["label"])
        size = min(len(self.test), len(labels) // 5)
        train_idx, val_idx = stratified_split(labels, size, seed)
        spec = TaskSpec(**{**self.spec.to_dict(), "name": f"{self.spec.name}:validation"})
        data = DatasetDict({"train": self.train.select(train_idx), "test": self.train.select(val_idx)})
        origin = {**self.origin, "name": f"{self.origin.get('name', self.spec.name)}:validation"}
        return Task(spec, data, origin)

    def subset(self, train_per_class: int | None = None, test_size: int | None = None, seed: int = 0) -> "Task":
        """A smaller task (for tests and quick runs): the first n shuffled examples of each class."""
        from datasets import DatasetDict

        rng = np.random.default_rng(seed)
        data = {}
        for split, per_class, total in (("train", train_per_class, None), ("test", None, test_size)):
            ds = self.data[split]
            order = rng.permutation(len(ds))
            if per_class is not None:
                labels = np.asarray(ds["label"])[order]
                keep = np.concatenate([order[labels == c][:per_class] for c in range(self.num_classes)])
                order = np.sort(keep)
            elif total is not None:
                order = np.sort(order[:total])
            data[split] = ds.select(order.tolist())
        spec = TaskSpec(**{**self.spec.to_dict(), "name": f"{self.spec.name}-subset"})
        origin = {**self.origin, "subset": {"train_per_class": train_per_class, "test_size": test_size, "seed": seed}}
        return Task(spec, DatasetDict(data), origin)


def build_task(
    spec: TaskSpec,
    train: tuple[list[str], list[str] | None, list[int]],
    test: tuple[list[str], list[str] | None, list[int]],
    languages: tuple[list[str], list[str]] | None = None,
) -> Task:
    """Validate (text, text_pair, label) columns and wrap them as a Task; ``languages`` (train, test) adds each
    example's language (a code such as "en") as a ``language`` column, by which evaluation splits accuracy."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    features = {"text": Value("string")}
    if spec.pair:
        features["text_pair"] = Value("string")
    features["label"] = ClassLabel(names=list(spec.classes))
    if languages is not None:
        features["language"] = Value("string")
    splits = {}
    for n, (split, (texts, pairs, labels)) in enumerate((("train", train), ("test", test))):
        if not texts:
            raise DataError(f"{spec.name}: the {split} split is empty")
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{spec.name}: {split} example {i} has an empty text")
        columns = {"text": texts, "label": labels}
        if spec.pair:
            assert pairs is not None
            for i, text in enumerate(pairs):  # hub columns come here unchecked, like the first text
                if not isinstance(text, str) or not text.strip():
                    raise DataError(f"{spec.name}: {split} example {i} has an empty second text")
            columns["text_pair"] = pairs
        if languages is not None:
            langs = languages[n]
            if len(langs) != len(texts):
                raise DataError(f"{spec.name}: the {split} split has {len(texts)} texts but {len(langs)} languages")
            for i, lang in enumerate(langs):
                if not isinstance(lang, str) or not lang.strip():
                    raise DataError(f"{spec.name}: {split} example {i} has no language (got {lang!r})")
            columns["language"] = list(langs)
        splits[split] = Dataset.from_dict(columns, features=Features(features))
    present = Counter(train[2])
    if len(present) < 2:
        raise DataError(f"{spec.name}: the training data has a single class ({spec.classes[next(iter(present))]!r}); "
                        "classification needs at least two")
    return Task(spec, DatasetDict(splits))


def stratified_split(labels: list[int], test_size: int | float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of a seeded stratified train/test split (sorted, so the order is the source order)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    tr, te = train_test_split(idx, test_size=test_size, random_state=seed, stratify=labels)
    return sorted(tr.tolist()), sorted(te.tolist())


def text_key(text: str, pair: str | None = None) -> str:
    """What counts as the same example: case and runs of whitespace ignored."""
    key = " ".join(text.casefold().split())
    return key if pair is None else key + "\x1f" + " ".join(pair.casefold().split())


def dedupe(texts: list[str], labels: list) -> tuple[list[str], list]:
    """Keep the first copy of each text (``text_key``); drop texts that appear with more than one label."""
    seen: dict[str, set] = {}
    for t, y in zip(texts, labels):
        seen.setdefault(text_key(t), set()).add(y)
    out_t, out_y, done = [], [], set()
    for t, y in zip(texts, labels):
        k = text_key(t)
        if len(seen[k]) == 1 and k not in done:
            done.add(k)
            out_t.append(t)
            out_y.append(y)
    return out_t, out_y


def overlap(task: Task) -> dict[str, int]:
    """Duplicates within each split and test examples with a copy in train (``text_key``): a clean task has 0s."""
    keys = {}
    for split in ("train", "test"):
        texts, pairs, _ = task.columns(split)
        keys[split] = [text_key(t, None if pairs is None else p) for t, p in zip(texts, pairs or texts)]
    train = set(keys["train"])
    return {"train_duplicates": len(keys["train"]) - len(train),
            "test_duplicates": len(keys["test"]) - len(set(keys["test"])),
            "test_in_train": sum(k in train for k in keys["test"])}
