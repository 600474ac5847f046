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
