import os

os.environ["HF_HUB_OFFLINE"] = "1"  # an accidental download fails fast
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def mr():
    from textdistill.data import get_task

    return get_task("mr")


@pytest.fixture(scope="session")
def mr_small(mr):
    """A small real slice of MR: 12 training examples per class, 60 test examples."""
    return mr.subset(train_per_class=12, test_size=60, seed=0)
