from pathlib import Path

import pytest

from textdistill.data import get_task
from textdistill.errors import DataError, ResourceMissing

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_sst2_glue_layout(tmp_path):
    d = tmp_path / "sst2"
    d.mkdir()
    (d / "train.tsv").write_text('sentence\tlabel\na "quoted start \t1\nbad film \t0\nfine film \t1\n')
    (d / "dev.tsv").write_text("sentence\tlabel\ngreat \t1\nawful \t0\n")
    task = get_task("sst2", data_dir=tmp_path)
    assert task.train["text"][0] == 'a "quoted start'  # quoting off, as GLUE needs
    assert task.train["label"] == [1, 0, 1] and len(task.test) == 2


def test_mrpc_with_bom_and_pairs(tmp_path):
    head = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    (tmp_path / "train.tsv").write_text(head + "1\t1\t2\tA cat sat .\tA cat was sitting .\n0\t3\t4\tRain .\tSun .\n")
    (tmp_path / "dev.tsv").write_text(head + "1\t5\t6\tHe ran .\tHe was running .\n")
    task = get_task("mrpc", data_dir=tmp_path)
    assert task.spec.pair and task.train["text_pair"][0] == "A cat was sitting ."
    assert task.spec.classes[task.train["label"][0]] == "equivalent"


def test_ag_news_headerless_csv(tmp_path):
    (tmp_path / "train.csv").write_text('"3","Wall St.","Stocks rose\\nagain."\n"2","Match","A ""great"" game."\n')
    (tmp_path / "test.csv").write_text('"1","Summit","Leaders met."\n')
    task = get_task("ag_news", data_dir=tmp_path)
    assert task.train["text"][0] == "Wall St. Stocks rose again."
    assert [task.spec.classes[y] for y in task.train["label"]] == ["Business", "Sports"]


def test_hf_layout_jsonl(tmp_path):
    d = tmp_path / "trec"
    d.mkdir()
    (d / "train.jsonl").write_text('{"text": "who is it ?", "coarse_label": 3}\n{"text": "where ?", "coarse_label": 4}\n')
    (d / "test.jsonl").write_text('{"text": "what is a cat ?", "coarse_label": 1}\n')
    task = get_task("trec", data_dir=tmp_path)
    assert task.spec.classes[task.train["label"][0]] == "HUM"


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_yelp_digit_class_names_are_told_from_ids_by_column_type(tmp_path, fmt):
    """yelp_polarity's classes are named "1" and "2"; the hub's label column holds ids 0 and 1, so id 1 is "2"."""
    import pandas as pd

    rows = pd.DataFrame({"text": ["bad", "good", "fine"], "label": [0, 1, 1]})
    d = tmp_path / "ids"
    d.mkdir()
    for split in ("train", "test"):
        {"jsonl": lambda p: rows.to_json(p, orient="records", lines=True), "csv": lambda p: rows.to_csv(p, index=False),
         "parquet": lambda p: rows.to_parquet(p)}[fmt](d / f"{split}.{fmt}")
    task = get_task("yelp_polarity", data_dir=d)
    assert [task.spec.classes[y] for y in task.train["label"]] == ["1", "2", "2"]

    # A column of strings holds class names: "1" is the class named "1" (id 0).
    d = tmp_path / "names"
    d.mkdir()
    for split in ("train", "test"):
        (d / f"{split}.jsonl").write_text('{"text": "bad", "label": "1"}\n{"text": "good", "label": "2"}\n')
    assert get_task("yelp_polarity", data_dir=d).train["label"] == [0, 1]
    (d / "train.jsonl").write_text('{"text": "bad", "label": "1"}\n{"text": "good", "label": "0"}\n')
    with pytest.raises(DataError, match="train.jsonl:2: label '0' is not one of yelp_polarity's classes 1, 2"):
        get_task("yelp_polarity", data_dir=d)


def test_bad_label_and_missing_files(tmp_path):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\nok \t7\n")
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\nok \t1\n")
    with pytest.raises(DataError, match=r"train.tsv:2: label '7' is not one of sst2's classes"):
        get_task("sst2", data_dir=tmp_path)
    with pytest.raises(DataError, match="no qnli files"):
        get_task("qnli", data_dir=tmp_path / "empty")


def test_hub_path_fails_fast_offline():
    with pytest.raises(ResourceMissing, match="--data-dir"):
        get_task("sst2")


@pytest.mark.skipif(not (SHARED / "sst2").exists(), reason="no shared benchmark copies here")
def test_shared_glue_copies():
    sst2 = get_task("sst2", data_dir=SHARED)
    assert (len(sst2.train), len(sst2.test)) == (67349, 872)
    mrpc = get_task("mrpc", data_dir=SHARED)
    assert (len(mrpc.train), len(mrpc.test)) == (3668, 408)
    assert sum(mrpc.train["label"]) == 2474
    with pytest.raises(DataError, match="train.csv: no such file"):  # the shared copy lacks AG News train
        get_task("ag_news", data_dir=SHARED)
