"""Standard benchmarks: from the Hugging Face hub, or from a local directory in GLUE or HF layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, ResourceMissing
from .files import FORMATS, class_ids, column, read_rows
from .task import Task, TaskSpec, build_task


@dataclass(frozen=True)
class LocalLayout:
    """Files of a released copy (e.g. GLUE TSVs): names, columns, and a header for headerless files."""

    train: str
    test: str
    text: str
    pair: str | None
    label: str
    header: tuple[str, ...] | None = None
    join: str | None = None  # a column prepended to `text` (AG News: title + description)
    label_offset: int = 0  # released ids minus this are HF ids (AG News counts from 1)


@dataclass(frozen=True)
class Benchmark:
    name: str
    hub: tuple[str, str | None]
    test_split: str  # the hub split used as test (GLUE test labels are hidden: validation)
    text: str
    pair: str | None
    label: str
    classes: tuple[str, ...]
    max_length: int
    size: str
    layouts: tuple[LocalLayout, ...] = ()


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in [
        Benchmark("sst2", ("glue", "sst2"), "validation", "sentence", None, "label", ("negative", "positive"), 64,
                  "67,349 / 872", (LocalLayout("train.tsv", "dev.tsv", "sentence", None, "label"),)),
        Benchmark("ag_news", ("fancyzhx/ag_news", None), "test", "text", None, "label",
                  ("World", "Sports", "Business", "Sci/Tech"), 128, "120,000 / 7,600",
                  (LocalLayout("train.csv", "test.csv", "description", None, "label",
                               header=("label", "title", "description"), join="title", label_offset=1),)),
        Benchmark("mrpc", ("glue", "mrpc"), "validation", "sentence1", "sentence2", "label",
                  ("not_equivalent", "equivalent"), 128, "3,668 / 408",
                  (LocalLayout("train.tsv", "dev.tsv", "#1 String", "#2 String", "Quality"),)),
        Benchmark("qnli", ("glue", "qnli"), "validation", "question", "sentence", "label",
                  ("entailment", "not_entailment"), 128, "104,743 / 5,463",
                  (LocalLayout("train.tsv", "dev.tsv", "question", "sentence", "label"),)),
        Benchmark("mnli", ("glue", "mnli"), "validation_matched", "premise", "hypothesis", "label",
                  ("entailment", "neutral", "contradiction"), 128, "392,702 / 9,815",
                  (LocalLayout("train.tsv", "dev_matched.tsv", "sentence1", "sentence2", "gold_label"),)),
        Benchmark("qqp", ("glue", "qqp"), "validation", "question1", "question2", "label",
                  ("not_duplicate", "duplicate"), 128, "363,846 / 40,430",
                  (LocalLayout("train.tsv", "dev.tsv", "question1", "question2", "is_duplicate"),)),
        Benchmark("trec", ("CogComp/trec", None), "test", "text", None, "coarse_label",
                  ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"), 64, "5,452 / 500"),
        Benchmark("imdb", ("stanfordnlp/imdb", None), "test", "text", None, "label", ("neg", "pos"), 256,
                  "25,000 / 25,000"),
        Benchmark("yelp_polarity", ("fancyzhx/yelp_polarity", None), "test", "text", None, "label", ("1", "2"), 256,
                  "560,000 / 38,000"),
        Benchmark("dbpedia", ("fancyzhx/dbpedia_14", None), "test", "content", None, "label",
                  ("Company", "EducationalInstitution", "Artist", "Athlete", "OfficeHolder", "MeanOfTransportation",
                   "Building", "NaturalPlace", "Village", "Animal", "Plant", "Album", "Film", "WrittenWork"),
                  128, "560,000 / 70,000"),
    ]
}


def _spec(b: Benchmark, source: str) -> TaskSpec:
    return TaskSpec(b.name, b.classes, max_length=b.max_length, source=source, pair=b.pair is not None)


def _read_split(b: Benchmark, path: Path, layout: LocalLayout | None) -> tuple[list[str], list[str] | None, list[int]]:
    text, pair, label = (layout.text, layout.pair, layout.label) if layout else (b.text, b.pair, b.label)
    rows = read_rows(path, header=list(layout.header) if layout and layout.header else None)
    if not rows:
        raise DataError(f"{path}: no data rows")
    texts = column(path, rows, text, text=True)
    if layout and layout.join:
        # AG News escapes newlines as a backslash and n; restore spaces.
        heads = column(path, rows, layout.join, text=True)
        texts = [f"{h} {t}".replace("\\n", " ") for h, t in zip(heads, texts)]
    pairs = column(path, rows, pair, text=True) if pair else None
    labels = class_ids(path, rows, label, b.classes, f"{b.name}'s classes", layout.label_offset if layout else 0)
    return texts, pairs, labels


def _find_local(b: Benchmark, data_dir: Path) -> Task | None:
    for folder in (data_dir / b.name, data_dir):
        for layout in b.layouts:
            if (folder / layout.train).exists() or (folder / layout.test).exists():
                train, test = folder / layout.train, folder / layout.test
                return build_task(_spec(b, str(folder)), _read_split(b, train, layout), _read_split(b, test, layout))
        for ext in FORMATS:  # HF layout: train.<ext> and <test split>.<ext> with the hub's columns
            train = folder / f"train{ext}"
            if train.exists():
                for test_name in (b.test_split, "test", "validation"):
                    test = folder / f"{test_name}{ext}"
                    if test.exists():
                        return build_task(_spec(b, str(folder)), _read_split(b, train, None), _read_split(b, test, None))
                raise DataError(f"{folder}: found {train.name} but no {b.test_split}{ext} or test{ext}")
    return None


def load_benchmark(name: str, data_dir: str | Path | None = None) -> Task:
    b = BENCHMARKS[name]
    if data_dir is not None:
        task = _find_local(b, Path(data_dir))
        if task is None:
            expected = [f"{lay.train} + {lay.test}" for lay in b.layouts] + [f"train.jsonl + {b.test_split}.jsonl"]
            raise DataError(f"{data_dir}: no {name} files in it or in {Path(data_dir) / name}; expected "
                            + " or ".join(expected))
        return task
    try:
        from datasets import load_dataset

        ds = load_dataset(*b.hub)
    except Exception as e:  # offline, or the hub is unreachable
        raise ResourceMissing(f"could not load {name} from the hub ({b.hub[0]}): {type(e).__name__}. "
                              f"Offline, pass --data-dir with a GLUE- or HF-layout copy") from None
    splits = []
    for split in ("train", b.test_split):
        d = ds[split]
        splits.append((list(d[b.text]), list(d[b.pair]) if b.pair else None, list(d[b.label])))
    return build_task(_spec(b, f"hub:{'/'.join(x for x in b.hub if x)}"), splits[0], splits[1])
