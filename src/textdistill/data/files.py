"""User data files (CSV, TSV, JSONL, Parquet) read into tasks, with errors that name file and line."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import sys
from collections import Counter
from pathlib import Path

from ..errors import ConfigError, DataError
from .task import Task, TaskSpec, build_task, overlap, stratified_split

FORMATS = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}

Row = tuple[int, dict]  # (line number in the file, record)
MISSING = ("", "nan", "none", "null")  # what spreadsheets and pandas write for a missing value
DECIMAL = re.compile(r"[+-]?\d+\.\d*")  # "1.0" is the integer 1 written by a float column
INTEGER = re.compile(r"-?\d+")

csv.field_size_limit(2**31 - 1)  # a long document in one cell is still one field


def _decode(path: Path, encoding: str) -> str:
    data = path.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: bytes {data[e.start:e.end]!r} at offset {e.start} are not valid "
                        f"{encoding.upper().removesuffix('-SIG')}; "
                        "save the file as UTF-8") from None


def read_rows(path: str | Path, header: list[str] | None = None, encoding: str = "utf-8-sig") -> list[Row]:
    """Rows of a table file as (line, record) pairs. TSV is read with quoting off (GLUE style).

    ``header`` names the columns of a file that has no header row.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a data file")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unknown file type {path.suffix!r}; expected one of {', '.join(sorted(FORMATS))}")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            records = pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several types for a broken file
            raise DataError(f"{path}: not a readable Parquet file ({e})") from None
        return [(i + 2, r) for i, r in enumerate(records)]
    text = _decode(path, encoding)
    if fmt == "jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{n}: expected a JSON object per line")
            rows.append((n, record))
        return rows
    if fmt == "csv":
        reader = csv.reader(io.StringIO(text, newline=""))
    else:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
        lines = [(reader.line_num, row) for row in reader]
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: malformed {fmt.upper()} ({e})") from None
    if header is None:
        if not lines:
            raise DataError(f"{path}: the file is empty")
        header = [h.strip() for h in lines[0][1]]
        lines = lines[1:]
    rows = []
    for n, values in lines:
        if not values or values == [""]:
            continue
        if len(values) != len(header):
            raise DataError(f"{path}:{n}: {len(values)} fields, expected {len(header)} ({', '.join(header)})")
        rows.append((n, dict(zip(header, values))))
    return rows


def column(path: Path, rows: list[Row], name: str, *, text: bool) -> list[str]:
    """One column as strings; an unknown column or (for text) an empty or non-string value is an error."""
    _check_column(path, rows, name)
    out = []
    for n, record in rows:
        value = record.get(name)
        if value is None or (text and not str(value).strip()):
            raise DataError(f"{path}:{n}: empty {name!r}")
        if text and not isinstance(value, str):
            raise DataError(f"{path}:{n}: {name!r} is a {type(value).__name__} ({value!r:.40}), expected text")
        out.append(str(value).strip() if text else str(value))
    return out


def label_column(path: Path, rows: list[Row], name: str) -> list[str]:
    """Class names read by the column's type: strings stripped, integers (and integer-valued floats such as
    1.0 or "1.0") as the integer; missing values (naming every row), fractions and lists are errors."""
    _check_column(path, rows, name)
    out, missing = [], []
    for n, record in rows:
        value = record.get(name)
        if isinstance(value, str):
            value = value.strip()
            value = float(value) if DECIMAL.fullmatch(value) else value
        if value is None or (isinstance(value, float) and math.isnan(value)) or (
                isinstance(value, str) and value.lower() in MISSING):
            missing.append(n)
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, float):
            raise DataError(f"{path}:{n}: label {value!r} in {name!r} is a fractional number; "
                            "labels are class names or integers")
        if not isinstance(value, (str, int)):
            raise DataError(f"{path}:{n}: label {value!r:.40} in {name!r} is a {type(value).__name__}; "
                            "labels are class names or integers")
        out.append(str(value))
    if missing:
        lines = ", ".join(map(str, missing[:10])) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise DataError(f"{path}: missing value in label column {name!r} at line{'s' * (len(missing) > 1)} {lines} "
                        f"(empty, NaN, None or null); fill in or drop those rows")
    return out


def class_ids(path: Path, rows: list[Row], name: str, classes: list[str] | tuple[str, ...], what: str,
              offset: int = 0) -> list[int]:
    """Ids of known classes from a label column, read by the column's type: a column of integers holds class
    ids (minus ``offset``), a column of strings holds class names, so that a digit class name (yelp_polarity's
    "1") is never taken for an id, nor an id for a name. CSV and TSV have no types: there a column of integers
    holds ids, as the hub's columns (and GLUE's) do."""
    values = label_column(path, rows, name)
    typed = FORMATS.get(path.suffix.lower()) in ("jsonl", "parquet")
    ids = all(INTEGER.fullmatch(v) for v in values) and not (
        typed and any(isinstance(record.get(name), str) for _, record in rows))
    out = []
    for (n, _), v in zip(rows, values):
        if ids and 0 <= int(v) - offset < len(classes):
            out.append(int(v) - offset)
        elif not ids and v in classes:
            out.append(list(classes).index(v))
        else:
            how = (f"a column of integers holds class ids {offset}..{offset + len(classes) - 1}" if ids
                   else "a column of strings holds class names")
            raise DataError(f"{path}:{n}: label {v!r} is not one of {what} {', '.join(classes)} ({how})")
    return out


def _check_column(path: Path, rows: list[Row], name: str) -> None:
    if rows and name not in rows[0][1]:
        raise DataError(f"{path}: no column {name!r}; the columns are {', '.join(map(str, rows[0][1]))}")


def label_names(values: list[str]) -> list[str]:
    """Sorted class names: numerically when every label is an integer."""
    unique = set(values)
    if all(v.lstrip("-").isdigit() for v in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def warn_similar_labels(path: Path, names: list[str]) -> None:
    """Labels that differ only in case or spacing (`POS`, `pos`) are kept apart as written, but said: they are
    usually one class spelt two ways."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(" ".join(name.casefold().split()), []).append(name)
    similar = [" and ".join(map(repr, g)) for g in groups.values() if len(g) > 1]
    if similar:
        print(f"warning: {path}: labels {'; '.join(similar)} differ only in case or spacing and are read as "
              f"different classes; spell each class one way if they are one", file=sys.stderr)


def to_ids(path: Path, rows: list[Row], values: list[str], names: list[str]) -> list[int]:
    index = {name: i for i, name in enumerate(names)}
    ids = []
    for (n, _), v in zip(rows, values):
        if v not in index:
            raise DataError(f"{path}:{n}: label {v!r} is not among the training labels ({', '.join(names)})")
        ids.append(index[v])
    return ids


def load_file_task(
    train_file: str | Path,
    test_file: str | Path | None = None,
    *,
    text_col: str = "text",
    label_col: str = "label",
    pair_col: str | None = None,
    test_size: float = 0.2,
    seed: int = 0,
    max_length: int = 64,
    name: str | None = None,
) -> Task:
    """A task from the user's own file(s): a separate test file, or a seeded stratified split."""
    if not 0 < test_size < 1:
        raise ConfigError(f"test_size (--test-size) must be a fraction between 0 and 1, got {test_size}")
    train_path = Path(train_file)
    rows = read_rows(train_path)
    if not rows:
        raise DataError(f"{train_path}: no data rows")
    texts = column(train_path, rows, text_col, text=True)
    pairs = column(train_path, rows, pair_col, text=True) if pair_col else None
    raw = label_column(train_path, rows, label_col)
    names = label_names(raw)
    warn_similar_labels(train_path, names)
    labels = to_ids(train_path, rows, raw, names)
    spec = TaskSpec(name or train_path.stem, tuple(names), max_length=max_length, source=str(train_path),
                    pair=pair_col is not None)
    if test_file is None:
        if len(names) < 2:
            return build_task(spec, (texts, pairs, labels), (texts, pairs, labels))  # raises: single class
        counts = Counter(raw)
        single = [repr(c) for c in names if counts[c] == 1]
        if single:
            raise DataError(f"{train_path}: a stratified split needs at least 2 examples of each class; "
                            f"{', '.join(single)} {'has' if len(single) == 1 else 'have'} 1 (add examples, drop "
                            "the class or pass --test-file)")
        try:
            tr, te = stratified_split(labels, test_size, seed)
        except ValueError as e:  # sklearn: too few test rows for the classes
            raise DataError(f"{train_path}: cannot split {len(labels)} rows by class ({e}); pass --test-file "
                            "or another --test-size") from None
        pick = lambda xs, idx: None if xs is None else [xs[i] for i in idx]  # noqa: E731
        return build_task(spec, (pick(texts, tr), pick(pairs, tr), pick(labels, tr)),
                          (pick(texts, te), pick(pairs, te), pick(labels, te)))
    test_path = Path(test_file)
    test_rows = read_rows(test_path)
    if not test_rows:
        raise DataError(f"{test_path}: no data rows")
    test = (
        column(test_path, test_rows, text_col, text=True),
        column(test_path, test_rows, pair_col, text=True) if pair_col else None,
        to_ids(test_path, test_rows, label_column(test_path, test_rows, label_col), names),
    )
    task = build_task(spec, (texts, pairs, labels), test)
    inside = overlap(task)["test_in_train"]
    if inside:  # a test example seen in training scores what was memorised, not what was learned
        print(f"warning: {test_path}: {inside} of {len(test[0])} test examples also appear in {train_path} (case and "
              "whitespace ignored), so accuracy on them measures memory; drop them from one of the files",
              file=sys.stderr)
    return task
