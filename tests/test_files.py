import pytest

from textdistill.data import get_task, load_file_task
from textdistill.errors import DataError


def write(path, text, mode="w"):
    path.write_text(text) if mode == "w" else path.write_bytes(text)
    return path


def rows(n, labels=("pos", "neg")):
    return "".join(f"sentence number {i},{labels[i % len(labels)]}\n" for i in range(n))


def test_csv_with_split_ratio(tmp_path):
    f = write(tmp_path / "d.csv", "text,label\n" + rows(20))
    task = load_file_task(f, test_size=0.25, seed=0)
    assert (len(task.train), len(task.test)) == (15, 5)
    assert task.spec.classes == ("neg", "pos")
    assert get_task(str(f)).origin["name"] == str(f.resolve())


@pytest.mark.parametrize("ext", ["tsv", "jsonl", "parquet"])
def test_other_formats_with_test_file(tmp_path, ext):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    data = [{"review": f"text {i}", "y": str(i % 2), "other": f"second {i}"} for i in range(10)]
    for name in ("train", "test"):
        path = tmp_path / f"{name}.{ext}"
        if ext == "tsv":
            path.write_text("review\ty\tother\n" + "".join(f"{d['review']}\t{d['y']}\t{d['other']}\n" for d in data))
        elif ext == "jsonl":
            path.write_text("".join(json.dumps(d) + "\n" for d in data))
        else:
            pq.write_table(pa.Table.from_pylist(data), path)
    task = load_file_task(tmp_path / f"train.{ext}", tmp_path / f"test.{ext}", text_col="review", label_col="y",
                          pair_col="other")
    assert task.spec.pair and task.test["text_pair"][0] == "second 0"
    assert task.spec.classes == ("0", "1")


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_file_task(tmp_path / "absent.csv")


def test_unknown_column_lists_the_columns(tmp_path):
    f = write(tmp_path / "d.csv", "sentence,label\n" + rows(6))
    with pytest.raises(DataError, match=r"no column 'text'; the columns are sentence, label"):
        load_file_task(f)


def test_empty_text_names_the_line(tmp_path):
    f = write(tmp_path / "d.csv", "text,label\n" + rows(4) + " ,pos\n")
    with pytest.raises(DataError, match=r"d.csv:6: empty 'text'"):
        load_file_task(f)


def test_label_in_test_that_train_lacks(tmp_path):
    tr = write(tmp_path / "tr.csv", "text,label\n" + rows(4))
    te = write(tmp_path / "te.csv", "text,label\na,pos\nb,maybe\n")
    with pytest.raises(DataError, match=r"te.csv:3: label 'maybe' is not among the training labels"):
        load_file_task(tr, te)


def test_single_class(tmp_path):
    f = write(tmp_path / "d.csv", "text,label\n" + rows(6, labels=("pos",)))
    with pytest.raises(DataError, match="single class"):
        load_file_task(f)


def test_undecodable_bytes_name_line_and_offset(tmp_path):
    f = write(tmp_path / "d.csv", b"text,label\nfine,pos\ncaf\xe9,neg\n", mode="b")
    with pytest.raises(DataError, match=r"d.csv:3: bytes b'\\xe9' at offset 23 are not valid UTF-8"):
        load_file_task(f)


def test_wrong_field_count_and_bad_json(tmp_path):
    f = write(tmp_path / "d.tsv", "text\tlabel\na\tpos\nb\tneg\textra\n")
    with pytest.raises(DataError, match=r"d.tsv:3: 3 fields, expected 2"):
        load_file_task(f)
    g = write(tmp_path / "d.jsonl", '{"text": "a", "label": "x"}\n{"text": \n')
    with pytest.raises(DataError, match=r"d.jsonl:2: not valid JSON"):
        load_file_task(g)


def test_unknown_extension(tmp_path):
    with pytest.raises(DataError, match="unknown file type '.xlsx'"):
        load_file_task(write(tmp_path / "d.xlsx", "x"))
