"""User data files (CSV, TSV, JSONL, Parquet) read into tasks, with errors that name file and line."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..errors import DataError
from .task import Task, TaskSpec, build_task, stratified_split

FORMATS = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}

Row = tuple[int, dict]  # (line number in the file, record)


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
    """One column as strings; an unknown column or (for text) an empty value is an error."""
    if rows and name not in rows[0][1]:
        raise DataError(f"{path}: no column {name!r}; the columns are {', '.join(map(str, rows[0][1]))}")
    out = []
    for n, record in rows:
        value = record.get(name)
        if value is None or (text and not str(value).strip()):
            raise DataError(f"{path}:{n}: empty {name!r}")
        out.append(str(value).strip() if text else str(value))
    return out


def label_names(values: list[str]) -> list[str]:
    """Sorted class names: numerically when every label is an integer."""
    unique = set(values)
    if all(v.lstrip("-").isdigit() for v in unique):
        return sorted(unique, key=int)
    return sorted(unique)


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
    train_path = Path(train_file)
    rows = read_rows(train_path)
    if not rows:
        raise DataError(f"{train_path}: no data rows")
    texts = column(train_path, rows, text_col, text=True)
    pairs = column(train_path, rows, pair_col, text=True) if pair_col else None
    raw = column(train_path, rows, label_col, text=True)
    names = label_names(raw)
    labels = to_ids(train_path, rows, raw, names)
    spec = TaskSpec(name or train_path.stem, tuple(names), max_length=max_length, source=str(train_path),
                    pair=pair_col is not None)
    if test_file is None:
        if len(names) < 2:
            return build_task(spec, (texts, pairs, labels), (texts, pairs, labels))  # raises: single class
        tr, te = stratified_split(labels, test_size, seed)
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
        to_ids(test_path, test_rows, column(test_path, test_rows, label_col, text=True), names),
    )
    return build_task(spec, (texts, pairs, labels), test)
