import re
from collections import Counter
from pathlib import Path

import pytest

from textdistill.data import builtin, get_task, list_tasks
from textdistill.errors import DataError

# name: (train size, test size, train counts per class)
BUILTIN_SIZES = {
    "mr": (3000, 1000, [1500, 1500]),
    "bbc": (1624, 500, [385, 282, 308, 384, 265]),  # deduplicated: 101 copies of articles dropped
    "rt": (10200, 2551, [4306, 5894]),
    "tweets": (29723, 7431, [12761, 11530, 5432]),
    "finefoods": (3979, 993, [1395, 2584]),
}


@pytest.mark.parametrize("name", list(BUILTIN_SIZES))
def test_builtin_task_sizes_and_balance(name):
    task = get_task(name)
    n_train, n_test, counts = BUILTIN_SIZES[name]
    assert (len(task.train), len(task.test)) == (n_train, n_test)
    train_counts = Counter(task.train["label"])
    assert [train_counts[c] for c in range(task.num_classes)] == counts
    assert task.train.features["label"].names == list(task.spec.classes)
    assert all(t.strip() for t in task.test["text"])
    # stratified: every class has the same share in train and test (within one example); finefoods comes split
    # and lost 7 test copies of train reviews
    test_counts = Counter(task.test["label"])
    for c in range(task.num_classes):
        assert abs(test_counts[c] / n_test - train_counts[c] / n_train) < (0.02 if name == "finefoods" else 0.01)


def test_split_is_deterministic():
    a, b = builtin.load_mr(), builtin.load_mr()
    assert a.fingerprint == b.fingerprint
    assert list(a.test["text"][:5]) == list(b.test["text"][:5])


def test_subset_is_deterministic_and_balanced(mr):
    a, b = mr.subset(10, 40, seed=3), mr.subset(10, 40, seed=3)
    assert a.fingerprint == b.fingerprint
    assert Counter(a.train["label"]) == {0: 10, 1: 10}
    assert mr.subset(10, 40, seed=4).fingerprint != a.fingerprint


def test_readme_task_table_matches_list_tasks():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    rows = {m.group(1): (int(m.group(2)), m.group(3).strip())
            for m in re.finditer(r"^\| `([\w-]+)` \| (\d+) \| ([\d,]+ / [\d,]+) \|", readme, re.M)}
    listed = {t.name: (t.classes, t.size) for t in list_tasks()}
    assert rows == listed


def test_unknown_task_names_the_choices():
    with pytest.raises(DataError, match="unknown task 'nope'.*mr"):
        get_task("nope")


@pytest.mark.parametrize("bad", ["", "   ", None])
def test_an_empty_second_text_is_named(bad):
    """Hub pair columns reach build_task unchecked: the second text is checked like the first."""
    from textdistill.data import TaskSpec, build_task

    spec = TaskSpec("pairs", ("no", "yes"), pair=True)
    good = (["a", "b", "c", "d"], ["w", "x", "y", "z"], [0, 1, 0, 1])
    assert len(build_task(spec, good, good).train) == 4
    with pytest.raises(DataError, match="pairs: test example 2 has an empty second text"):
        build_task(spec, good, (["a", "b", "c", "d"], ["w", "x", bad, "z"], [0, 1, 0, 1]))


def test_builtin_tasks_are_deduplicated_before_splitting():
    from textdistill.data.task import overlap

    bbc = get_task("bbc")
    assert (len(bbc.train), len(bbc.test)) == (1624, 500)  # 2,225 articles, 101 of them copies
    assert overlap(bbc) == {"train_duplicates": 0, "test_duplicates": 0, "test_in_train": 0}


def test_overlap_counts_copies_ignoring_case_and_spaces():
    from textdistill.data.task import TaskSpec, build_task, dedupe, overlap

    spec = TaskSpec("t", ("a", "b"))
    task = build_task(spec, (["Good film", "good  film", "bad film", "dull"], None, [1, 1, 0, 0]),
                      (["GOOD FILM", "new one", "new one"], None, [1, 0, 0]))
    assert overlap(task) == {"train_duplicates": 1, "test_duplicates": 1, "test_in_train": 1}
    # the first copy is kept; a text with two labels is dropped altogether
    assert dedupe(["x", "X ", "y", "z", "Z"], [0, 0, 1, 0, 1]) == (["x", "y"], [0, 1])


def test_list_tasks_check_reports_overlap(capsys, monkeypatch):
    from textdistill import data
    from textdistill.cli import main

    some = [t for t in list_tasks() if t.name in ("mr", "sst2")]
    monkeypatch.setattr(data, "list_tasks", lambda: some)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["list", "tasks", "--check", "--data-dir", str(Path(__file__).parent / "no-such-dir")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[out.index(next(line for line in out if line.startswith("task ") and "test in train" in line)) + 1].split() \
        == ["mr", "0", "0", "0"]
    assert any(line.startswith("sst2") and "no sst2 files" in line for line in out)


def test_validation_task_is_carved_from_train_only():
    mr, val = get_task("mr"), get_task("mr:validation")
    assert (len(val.train), len(val.test)) == (2400, 600) and val.name == "mr:validation"
    assert set(val.train["text"]) | set(val.test["text"]) == set(mr.train["text"])
    assert not set(val.train["text"]) & set(val.test["text"])
    assert not set(val.test["text"]) & set(mr.test["text"])  # the real test split is never read
    assert sorted(Counter(val.test["label"]).values()) == [300, 300]
    assert get_task(val.origin["name"]).fingerprint == val.fingerprint  # reloads from what a set records
