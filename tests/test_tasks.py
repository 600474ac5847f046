import re
from collections import Counter
from pathlib import Path

import pytest

from textdistill.data import builtin, get_task, list_tasks
from textdistill.errors import DataError

# name: (train size, test size, train counts per class)
BUILTIN_SIZES = {
    "mr": (3000, 1000, [1500, 1500]),
    "bbc": (1725, 500, [396, 299, 323, 396, 311]),
    "rt": (10201, 2551, [4307, 5894]),
    "tweets": (29757, 7440, [12764, 11544, 5449]),
    "finefoods": (4000, 1000, [1400, 2600]),
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
    # stratified: every class has the same share in train and test (within one example)
    test_counts = Counter(task.test["label"])
    for c in range(task.num_classes):
        assert abs(test_counts[c] / n_test - train_counts[c] / n_train) < 0.01


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
            for m in re.finditer(r"^\| `(\w+)` \| (\d+) \| ([\d,]+ / [\d,]+) \|", readme, re.M)}
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
