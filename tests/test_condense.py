"""condense: an LM condenses clusters of real examples; gradient alignment picks the generation."""

import types

import pytest
import torch

from textdistill.data import get_task
from textdistill.errors import ConfigError
from textdistill.learners import get_learner
from textdistill.methods import get_method
from textdistill.methods.condense import head_gradient


class FakeLM:
    """Deterministic candidates: pieces of the prompt's own examples, plus one empty and one off-topic text."""

    name = "fake"

    def __init__(self):
        self.prompts = []

    def generate(self, prompt, n, max_new_tokens=40, seed=0, **kw):
        self.prompts.append(prompt)
        examples = [line[2:] for line in prompt.splitlines() if line.startswith("- ")]
        return ([examples[0], " ".join(examples[:2]), "", "the weather report for tuesday"] * n)[:n]


@pytest.fixture
def fake_lm(monkeypatch):
    lm = FakeLM()
    monkeypatch.setattr("textdistill.lm.get_lm", lambda name, device="cpu": lm)
    return lm


def test_condense_keeps_the_best_aligned_generation_per_cluster(fake_lm):
    task = get_task("mr").subset(train_per_class=20, test_size=10, seed=0)
    learner = get_learner("minilm-frozen")
    ds = get_method("condense", candidates=4).distill(task, 2, learner, seed=0)
    assert ds.kind == "text" and ds.hard_labels.tolist() == [0, 0, 1, 1] and len(fake_lm.prompts) == 4
    clusters = ds.log["clusters"]
    assert [c["prompt"] for c in clusters] == fake_lm.prompts and all(len(c["generations"]) == 3 for c in clusters)
    texts, _, _ = task.columns("train")
    model = learner.build(task.num_classes, 0).eval()
    for text, c in zip(ds.texts, clusters):  # the scores and the choice, recomputed directly
        y = task.spec.classes.index(c["class"])
        prompt_rows = [line[2:] for line in c["prompt"].splitlines() if line.startswith("- ")]
        assert prompt_rows and set(prompt_rows) <= {texts[i] for i in c["rows"]}
        target = head_gradient(learner, model, learner.encode([texts[i] for i in c["rows"]]),
                               torch.full((len(c["rows"]),), y))
        scores = [float(torch.nn.functional.cosine_similarity(
            head_gradient(learner, model, learner.encode([g]), torch.tensor([y])), target, dim=0))
            for g in c["generations"]]
        assert c["scores"] == pytest.approx(scores, abs=1e-4)
        assert text == c["generations"][max(range(len(scores)), key=scores.__getitem__)]


def test_openai_endpoint_backend_calls_the_chat_api(monkeypatch):
    import openai

    from textdistill.lm import get_lm

    calls = {}

    class Client:
        def __init__(self, base_url, api_key):
            calls["url"] = base_url
            create = lambda **kw: calls.update(kw) or types.SimpleNamespace(choices=[  # noqa: E731
                types.SimpleNamespace(message=types.SimpleNamespace(content=f'"A condensed line {i}."\nextra'))
                for i in range(kw["n"])])
            self.chat = types.SimpleNamespace(completions=types.SimpleNamespace(create=create))

    monkeypatch.setattr(openai, "OpenAI", Client)
    lm = get_lm("openai:http://localhost:8000/v1/qwen")
    assert lm.generate("write", 2, max_new_tokens=20, seed=3) == ["A condensed line 0.", "A condensed line 1."]
    assert calls["url"] == "http://localhost:8000/v1" and calls["model"] == "qwen" and calls["max_tokens"] == 20
    with pytest.raises(ConfigError, match="openai:URL/MODEL"):
        get_lm("openai:nomodel")
