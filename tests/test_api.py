"""The public API: the README's example runs as written; names and objects alike; push_to_hub."""

import re
from pathlib import Path

import pytest
import torch

import textdistill as td

README = Path(__file__).parent.parent / "README.md"


def test_readme_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    code = re.search(r"## Python\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert re.fullmatch(r"\d+\.\d ± \d+\.\d\s*", capsys.readouterr().out.splitlines()[-1].split("#")[0] + " ")
    assert td.DistilledDataset.load(tmp_path / "runs" / "mr-herding-10").method == "herding"


def test_names_and_objects_alike(tmp_path):
    task = td.get_task("mr").subset(train_per_class=10, test_size=30, seed=0)
    by_name = td.distill(task, "kmeans", dpc=2, learner="minilm-frozen", n_init=2)
    by_object = td.distill(task, td.get_method("kmeans", n_init=2), dpc=2, learner=td.get_learner("minilm-frozen"))
    assert by_name.fingerprint() == by_object.fingerprint()
    (a,) = td.evaluate(task, by_name, learners=["minilm-frozen"], seeds=2)
    (b,) = td.evaluate(task, by_name, learners=[td.get_learner("minilm-frozen")], seeds=2)
    assert [r["accuracy"] for r in a.runs] == [r["accuracy"] for r in b.runs]
    assert a.learner == b.learner == "minilm-frozen"
    with pytest.raises(td.TextDistillError, match="options"):
        td.distill(task, td.get_method("kmeans"), dpc=2, learner="minilm-frozen", n_init=2)
    with pytest.raises(td.TextDistillError, match="cuda"):  # no GPU here; a coreset would say "CPU only"
        td.distill(task, "kmeans", dpc=2, learner="minilm-frozen", device="cuda")
    assert {"herding", "learned-labels"} <= set(td.list_methods()) and "minilm" in td.list_learners()


def test_push_to_hub_sends_the_text_set(monkeypatch):
    import datasets

    task = td.get_task("mr").subset(train_per_class=10, test_size=30, seed=0)
    ds = td.distill(task, "random", dpc=2, learner="minilm-frozen")
    ds.labels = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9]])  # soft labels travel too
    sent = {}
    monkeypatch.setattr(datasets.Dataset, "push_to_hub",
                        lambda self, repo_id, **kw: sent.update(data=self, repo=repo_id, kw=kw) or "url")
    assert ds.push_to_hub("me/mr-random-2", private=True) == "url"
    assert sent["repo"] == "me/mr-random-2" and sent["kw"] == {"private": True}
    assert sent["data"]["text"] == ds.texts and sent["data"]["label"] == [0, 0, 1, 1]
    assert sent["data"].features["label"].names == ["negative", "positive"]
    assert sent["data"]["soft_label"][2] == pytest.approx([0.3, 0.7])


def test_fit_on_set_is_the_model_evaluation_tests(tmp_path):
    """evaluate's run m and fit_on_set(seed=m) train the same model: the same predictions, so the same accuracy;
    the full training split trains when the set is None."""
    task = td.get_task("mr").subset(train_per_class=10, test_size=40, seed=0)
    ds = td.distill(task, "random", dpc=3, learner="minilm-frozen")
    (result,) = td.evaluate(task, ds, learners=["minilm-frozen"], seeds=2)
    texts, pairs, labels = task.columns("test")
    for m in (0, 1):
        fitted = td.fit_on_set(ds, "minilm-frozen", seed=m, task=task)
        accuracy = float((fitted.predict(texts, pairs) == torch.tensor(labels)).float().mean())
        assert accuracy == result.runs[m]["accuracy"] and fitted.log["last_epoch_loss"] == result.runs[m]["last_epoch_loss"]
    assert fitted.logits(texts[:3], None).shape == (3, 2)
    full = td.fit_on_set(None, "minilm-frozen", seed=0, task=task)
    (on_full,) = td.evaluate(task, None, learners=["minilm-frozen"], seeds=1)
    assert float((full.predict(texts, pairs) == torch.tensor(labels)).float().mean()) == on_full.runs[0]["accuracy"]
    with pytest.raises(td.TextDistillError, match="pass task"):
        td.fit_on_set(None, "minilm-frozen")


def test_distill_records_its_cost_and_can_run_without_bars(capfd):
    task = td.get_task("mr").subset(train_per_class=10, test_size=30, seed=0)
    capfd.readouterr()
    ds = td.distill(task, "dm", dpc=1, learner="minilm-frozen", iterations=3, progress=False)
    assert "it/s" not in capfd.readouterr().err
    assert ds.provenance.distill_step["seconds"] >= 0 and ds.provenance.distill_step["peak_rss_mib"] > 0
    with pytest.raises(td.TextDistillError, match="progress must be True or False"):
        td.distill(task, "random", dpc=1, progress="no")


def test_load_task_of_finds_the_sets_task_and_refuses_what_it_cannot_load(tmp_path):
    import warnings

    ds = td.distill("mr", "random", dpc=1, learner="minilm-frozen")
    assert td.load_task_of(ds).fingerprint == td.get_task("mr").fingerprint
    other = td.get_task("mr").subset(train_per_class=10, test_size=30, seed=0)  # same classes, other content
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert td.load_task_of(ds, other) is other
    assert any(issubclass(w.category, td.TextDistillWarning) and "fingerprint" in str(w.message) for w in caught)
    with pytest.raises(td.TextDistillError, match="classes"):
        td.load_task_of(ds, "bbc")
    data = tmp_path / "mine.csv"
    data.write_text("text,label\n" + "".join(f"sentence {i},{'ab'[i % 2]}\n" for i in range(40)))
    from_file = td.distill(str(data), "random", dpc=1, learner="minilm-frozen")
    with pytest.raises(td.TextDistillError, match="data file"):
        td.load_task_of(from_file)


def test_evaluation_encodes_each_text_list_once(monkeypatch):
    """Every seed reads the same set and test split: they are encoded once per learner, not once per seed."""
    from textdistill.learners.frozen import FrozenEncoderLearner as FrozenLearner

    task = td.get_task("mr").subset(train_per_class=10, test_size=30, seed=0)
    ds = td.distill(task, "random", dpc=2, learner="minilm-frozen")
    calls = []
    encode = FrozenLearner.encode
    monkeypatch.setattr(FrozenLearner, "encode", lambda self, texts, pairs=None: calls.append(len(texts))
                        or encode(self, texts, pairs))
    (result,) = td.evaluate(task, ds, learners=["minilm-frozen"], seeds=3)
    assert len(result.runs) == 3 and sorted(calls) == [4, 30]
