"""embed-invert: vectors learned in a sentence space, written back as text."""

import numpy as np
import pytest

from textdistill.data import get_task
from textdistill.errors import ConfigError
from textdistill.learners import get_learner
from textdistill.methods import get_method
from textdistill.methods.embed_invert import search


@pytest.fixture(scope="module")
def small():
    return get_task("mr").subset(train_per_class=30, test_size=20, seed=0)


def test_nearest_writes_distinct_real_sentences_of_the_right_class(small):
    ds = get_method("embed-invert", space_options="iterations=5").distill(small, 3, get_learner("minilm-frozen"), 0)
    texts, _, labels = small.columns("train")
    label_of = dict(zip(texts, labels))
    assert ds.kind == "text" and len(ds) == 6 and len(set(ds.texts)) == 6
    assert all(label_of[t] == y for t, y in zip(ds.texts, ds.hard_labels.tolist()))
    f = ds.log["fidelity"]
    assert f["cosine_to_target"] == f["nearest_real_cosine"] and all(0 < c <= 1 for c in f["cosine_to_target"])


def test_search_never_ends_worse_than_its_start():
    rng = np.random.default_rng(0)
    table = {s: rng.normal(size=8) for s in ["start", "a", "b", "c", "d", "e"]}
    target = table["start"] / np.linalg.norm(table["start"]) * 0.5 + rng.normal(size=8) * 0.1
    target /= np.linalg.norm(target)
    embed = lambda ss: np.stack([table[s] for s in ss])  # noqa: E731
    seen = []

    def propose(context, r):
        seen.append(list(context))
        return ["a", "b"] if r == 0 else ["c", "d", "e"]

    best, cos = search(target, "start", ["start", "x1", "x2"], propose, embed, rounds=2)
    unit = {s: float(v @ target / np.linalg.norm(v)) for s, v in table.items()}
    assert cos == pytest.approx(max(unit.values())) and unit[best] == pytest.approx(cos)
    assert cos >= unit["start"]
    assert seen[0][0] == "start" and len(seen) == 2  # the best so far leads the next prompt
    only_worse = search(target, "start", ["start"], lambda c, r: ["a"] if unit["a"] < unit["start"] else [], embed, 1)
    assert only_worse[0] == "start"


def test_embed_invert_refuses_token_learners_and_bad_options():
    with pytest.raises(ConfigError, match="key=value"):
        get_method("embed-invert", space_options="iterations")
    with pytest.raises(ConfigError, match="unknown option"):
        get_method("embed-invert", space_options="no_such=1")
    with pytest.raises(ConfigError, match="minilm-frozen"):
        get_method("embed-invert").distill(get_task("mr").subset(train_per_class=5, test_size=5), 1,
                                           get_learner("textcnn-glove"), 0)


@pytest.mark.slow
def test_search_with_the_offline_lm_improves_or_keeps_fidelity(small):
    ds = get_method("embed-invert", space_options="iterations=5", inverter="search", candidates=2, rounds=1,
                    max_new_tokens=16).distill(small, 1, get_learner("minilm-frozen"), 0)
    f = ds.log["fidelity"]
    assert all(a >= b - 1e-6 for a, b in zip(f["cosine_to_target"], f["nearest_real_cosine"]))
