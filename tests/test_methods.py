"""Conformance: every registered method distils a real slice of MR, round-trips, and evaluates."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import DatasetDict

from textdistill.errors import ConfigError, DataError
from textdistill.evaluation import evaluate
from textdistill.learners import get_learner
from textdistill.methods import METHODS, get_method, list_methods
from textdistill.distilled import DistilledDataset


# The learner each method is checked with (default minilm-frozen) and options that keep the check small.
CONFORMANCE = {
    "bptt": ("textcnn-glove", {"outer_steps": 2, "inner_steps": 2, "length": 8, "real_batch": 16}),
    "attention-labels": ("minilm", {"outer_steps": 1, "inner_steps": 1, "length": 6, "real_batch": 8}),
    "dc": ("textcnn-glove", {"outer_loops": 2, "inner_loops": 2, "length": 8, "real_batch": 8}),
    "dm": ("minilm-frozen", {"iterations": 5}),
    "mtt": ("minilm-frozen", {"iterations": 3, "experts": 1, "expert_epochs": 2, "max_start_epoch": 1,
                              "match_epochs": 1, "syn_steps": 3, "eval_steps": 5}),
    "gradmm": ("tiny-decoder", {"iterations": 2, "embed_steps": 1, "length": 6, "real_batch": 4}),
    "embed-invert": ("minilm-frozen", {"space_options": "iterations=3"}),
    "learned-labels": ("minilm-frozen", {"outer_steps": 2, "inner_steps": 2, "real_batch": 16}),
    "dilm": ("minilm-frozen", {"max_length": 10, "lm_steps": 2, "lm_batch": 4, "outer_loops": 1, "inner_loops": 2,
                               "learner_batch": 8, "regenerate_every": 1, "syn_batch": 3, "real_batch": 6,
                               "teachers": 1, "teacher_size": 4, "pool_factor": 2, "gen_batch": 8}),
}


def with_test_labels_permuted(task):
    """The task with its test labels shuffled (every test example of MR's slice moves to another label)."""
    from textdistill.data import Task

    labels = task.test["label"]
    perm = np.random.default_rng(0).permutation(len(labels))
    shuffled = task.test.map(lambda _, i: {"label": labels[perm[i]]}, with_indices=True)
    assert shuffled["label"] != labels
    return Task(task.spec, DatasetDict({"train": task.train, "test": shuffled}), task.origin)


def own_options(method: str, request, tmp_path) -> dict:
    """Options that need a fixture: dilm's tiny generator, a file of 2 examples per class for `file`."""
    if method == "dilm":
        return {"generator": request.getfixturevalue("tiny_generator")}
    if method == "condense":  # a fixed writer stands in for the LM (tests/test_condense.py; the real one is slow)
        from test_condense import FakeLM

        request.getfixturevalue("monkeypatch").setattr("textdistill.lm.get_lm", lambda name, device="cpu": FakeLM())
    if method == "file":
        texts, _, labels = request.getfixturevalue("mr_small").columns("train")
        first_two = [i for c in (0, 1) for i in [j for j, y in enumerate(labels) if y == c][:2]]
        rows = [json.dumps({"sentence": texts[i], "labels": labels[i]}) for i in first_two]
        (tmp_path / "set-2-0.jsonl").write_text("\n".join(rows))
        return {"path": str(tmp_path / "set-{dpc}-{seed}.jsonl")}
    return {}


@pytest.mark.parametrize("method", [m for m in list_methods() if "classification" in METHODS[m].task_kinds])
def test_method_conformance(method, mr_small, tmp_path, request, check_accuracy):
    learner_name, options = CONFORMANCE.get(method, ("minilm-frozen", {}))
    if learner_name == "tiny-decoder":  # a two-layer Llama folder (conftest), read as a decoder classifier
        learner_name = request.getfixturevalue("tiny_generator")
    options = {**options, **own_options(method, request, tmp_path)}
    learner = get_learner(learner_name)
    ds = get_method(method, **options).distill(mr_small, 2, learner, seed=0)
    assert ds.method == method and ds.task["fingerprint"] == mr_small.fingerprint
    assert Counter(ds.hard_labels.tolist()) == {0: 2, 1: 2}
    ds.save(tmp_path / "set")
    back = DistilledDataset.load(tmp_path / "set")
    assert back.fingerprint() == ds.fingerprint() and back.config == ds.config
    (result,) = evaluate(mr_small, back, [learner_name], seeds=2, cache=False, progress=False, recipe={"steps": 5})
    assert len(result.runs) == 2
    check_accuracy(mr_small, back, result)
    # Same seed, same artifact, even with the test labels permuted: no method reads the test split.
    permuted = with_test_labels_permuted(mr_small)
    assert permuted.fingerprint != mr_small.fingerprint
    again = get_method(method, **options).distill(permuted, 2, learner, seed=0)
    assert again.fingerprint() == ds.fingerprint()


@pytest.mark.parametrize("method", ["kcenter", "kmeans", "herding"])
def test_selection_is_real_and_distinct(method, mr_small):
    ds = get_method(method).distill(mr_small, 5, get_learner("minilm-frozen"), seed=1)
    texts, _, labels = mr_small.columns("train")
    assert len(set(ds.source_indices)) == 10
    assert [texts[i] for i in ds.source_indices] == ds.texts
    assert [labels[i] for i in ds.source_indices] == ds.labels.tolist()


def test_kcenter_never_picks_an_example_twice_among_duplicates():
    """Two distinct vectors, each three times, and a budget of 4: once both are covered every distance is 0."""
    vectors = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    for seed in range(6):
        picked = get_method("kcenter").select(vectors, 4, np.random.default_rng(seed))
        assert len(set(picked.tolist())) == 4
        assert {tuple(vectors[i]) for i in picked[:2]} == {(0.0, 1.0), (1.0, 0.0)}  # farthest-first still


def test_herding_matches_the_class_mean_better_than_random(mr_small):
    learner = get_learner("minilm-frozen")
    texts, _, labels = mr_small.columns("train")
    vectors, labels = learner.sentence_vectors(texts), np.array(labels)

    def gap(ds):
        picked = np.array(ds.source_indices)
        return sum(np.linalg.norm(vectors[labels == c].mean(0) - vectors[picked[labels[picked] == c]].mean(0))
                   for c in (0, 1))

    assert gap(get_method("herding").distill(mr_small, 4, learner)) < gap(get_method("random").distill(mr_small, 4, learner))


def test_budget_larger_than_a_class(mr_small):
    with pytest.raises(DataError, match="has 12 training examples, fewer than the budget of 13"):
        get_method("random").distill(mr_small, 13, get_learner("minilm-frozen"))


def test_empty_class(mr_small):
    from datasets import DatasetDict

    from textdistill.data import Task

    only_pos = mr_small.train.filter(lambda r: r["label"] == 1)
    task = Task(mr_small.spec, DatasetDict(train=only_pos, test=mr_small.test))
    with pytest.raises(DataError, match="class 'negative' has no training examples"):
        get_method("kmeans").distill(task, 1, get_learner("minilm-frozen"))


def test_unknown_method_and_option():
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        get_method("nope")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['k'\]"):
        get_method("kmeans", k=3)


def test_evaluate_full_data_and_cross_architecture(mr_small):
    results = evaluate(mr_small, None, ["minilm-frozen", "textcnn-glove"], seeds=2, cache=False, progress=False,
                       recipe={"steps": 20})
    assert [r.learner for r in results] == ["minilm-frozen", "textcnn-glove"]
    assert results[0].train_set["method"] == "full" and results[0].recipe["steps"] == 20
    assert results[0].runs[0]["seed"] == 0 and results[0].runs[1]["seed"] == 1


def _record_builds(monkeypatch, names):
    """Wrap ``build`` of these learners' classes: every model built is recorded as (learner, seed, weights)."""
    built = []
    for name in names:
        cls = type(get_learner(name))
        real = cls.build

        def build(self, num_labels, seed, real=real, name=name):
            model = real(self, num_labels, seed)
            weights = torch.cat([p.detach().flatten() for p in model.state_dict().values()])
            built.append((name, seed, weights))
            return model

        monkeypatch.setattr(cls, "build", build)
    return built


def test_evaluation_learners_never_draw_what_a_distillation_learner_drew(mr_small, monkeypatch):
    """The weights every evaluation learner starts from differ from those of every learner that distillation
    built (methods' own learners at set seeds 0 and 1, the teacher of teacher labels), and so do the streams of
    their training runs: torch keeps 32 bits of a seed, so equal integers are not the only way to share a stream."""
    from textdistill import train as train_module
    from textdistill.seeds import MAX_SET_SEED, TEACHER_SEED

    trained = []
    real_train = train_module.train
    monkeypatch.setattr("textdistill.evaluation.train", lambda *a, seed, **k: trained.append(seed) or real_train(*a, seed=seed, **k))
    names = ("minilm-frozen", "textcnn-glove")
    built = _record_builds(monkeypatch, names)
    with monkeypatch.context() as m:
        for module in ("dm", "dc"):
            m.setattr(f"textdistill.methods.{module}.train",
                      lambda *a, seed, **k: trained.append(seed) or real_train(*a, seed=seed, **k), raising=False)
        sets = [(get_method(method, **CONFORMANCE[method][1]).distill(mr_small, 2, get_learner(name), seed=s), name)
                for method, name in (("dm", "minilm-frozen"), ("dc", "textcnn-glove")) for s in (0, 1)]
    get_learner("minilm-frozen").build(2, TEACHER_SEED)
    distilling, distill_trained = list(built), list(trained)
    built.clear(), trained.clear()
    for ds, name in sets:
        (r,) = evaluate(mr_small, ds, [name], seeds=5, cache=False, progress=False, recipe={"steps": 2})
        assert [x["seed"] for x in r.runs] == [0, 1, 2, 3, 4]  # reported as before
    assert len(built) == 20 and len(trained) == 20 and len(distilling) > 4 and distill_trained
    for name, seed, weights in built:
        same = [s for n, s, w in distilling if n == name and torch.equal(w, weights)]
        assert not same, f"evaluation seed {seed} of {name} starts where distillation seed {same[0]} started"

    def draws(seed):
        return torch.randint(2**62, (4,), generator=torch.Generator().manual_seed(seed))

    assert not any(torch.equal(draws(a), draws(b)) for a in trained for b in distill_trained)
    # why ranges below 2**32: a seed 2**32 apart draws the same stream, so such a seed is refused
    assert torch.equal(draws(2**32 + 5), draws(5))
    with pytest.raises(ConfigError, match="2\\*\\*32"):
        get_learner("minilm-frozen").build(2, 2**32 + 5)
    with pytest.raises(ConfigError, match="set seed"):
        get_method("random").distill(mr_small, 2, get_learner("minilm-frozen"), seed=MAX_SET_SEED)


def test_minilm_trains_on_a_text_set(mr_small, check_accuracy):
    ds = get_method("kmeans").distill(mr_small, 2, get_learner("minilm"), seed=0)
    (r,) = evaluate(mr_small, ds, ["minilm"], seeds=1, cache=False, progress=False, recipe={"steps": 3})
    assert r.recipe["lr"] == 1e-4
    check_accuracy(mr_small, ds, r)


def test_file_set_is_checked_against_the_task(mr_small, tmp_path):
    learner = get_learner("minilm-frozen")
    (tmp_path / "a.csv").write_text("text,label\ngood,positive\nbad,negative\nfine,positive\n")
    with pytest.raises(DataError, match="expected 1 of each"):
        get_method("file", path=str(tmp_path / "a.csv")).distill(mr_small, 1, learner)
    (tmp_path / "b.csv").write_text("text,label\ngood,positive\nbad,awful\n")
    with pytest.raises(DataError, match="b.csv:3: label 'awful'"):
        get_method("file", path=str(tmp_path / "b.csv")).distill(mr_small, 1, learner)
    with pytest.raises(ConfigError, match="matches 0 files"):
        get_method("file", path=str(tmp_path / "set-{dpc}.csv")).distill(mr_small, 1, learner)


RELEASED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.skipif(not (RELEASED / "dilm-synthetic").exists(), reason="../shared/data is not on this machine")
def test_released_dilm_sets_load_for_sst2():
    from textdistill.data import get_task

    sst2 = get_task("sst2", data_dir=RELEASED / "sst2")
    path = str(RELEASED / "dilm-synthetic/sst2/dilm.dc/dpc_{dpc}.*/dataset/dataset_{seed}.json")
    ds = get_method("file", path=path).distill(sst2, 5, get_learner("minilm-frozen"), seed=3)
    assert Counter(ds.labels.tolist()) == {0: 5, 1: 5}
    assert "/dpc_5." in ds.log["file"] and ds.log["file"].endswith("dataset_3.json")
