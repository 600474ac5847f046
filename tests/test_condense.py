"""condense: an LM condenses clusters of real examples; gradient alignment picks the generation."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from textdistill.data import get_task
from textdistill.errors import ConfigError
from textdistill.learners import get_learner
from textdistill.methods import get_method
from textdistill.methods.condense import echoes, head_gradient, mean_head_gradient, parse_generation


class FakeLM:
    """Deterministic candidates: echoes of the prompt's own examples (a copy in other case and spacing, one with its
    last word changed, two joined), an empty answer, and two new texts (an off-topic one and a review)."""

    name = "fake"
    NEW = ["the weather report for tuesday", "an uneven picture that still finds moments of real grace"]

    def __init__(self):
        self.prompts = []

    def generate(self, prompt, n, max_new_tokens=40, seed=0, **kw):
        self.prompts.append(prompt)
        examples = [line[2:] for line in prompt.splitlines() if line.startswith("- ")]
        echoes = ["  " + examples[0].upper().replace(" ", "   "), examples[1].rsplit(" ", 1)[0] + " indeed",
                  " ".join(examples[:2])]
        return ((echoes + [""] + self.NEW) * n)[:n]


@pytest.fixture
def fake_lm(monkeypatch, tmp_path):
    from textdistill.cache import INPUTS
    from textdistill.resources import cache_dir

    cache = tmp_path / "cache"  # generations are cached by prompt: a fresh cache, sharing only the inputs
    cache.mkdir()
    for kind in INPUTS:
        (cache / kind).symlink_to(cache_dir() / kind)
    monkeypatch.setenv("TEXTDISTILL_CACHE", str(cache))
    lm = FakeLM()
    monkeypatch.setattr("textdistill.lm.get_lm", lambda name, device="cpu": lm)
    return lm


def alignment(model, x, y, classes):
    """Cosine between the mean cross-entropy gradient of a linear head (weight and bias) on the rows ``x`` of class
    ``y`` and that on one row, worked out in closed form in float64: (softmax(Wx + b) - onehot(y)) [x, 1]."""
    w, b = model.weight.detach().double().numpy(), model.bias.detach().double().numpy()

    def gradient(rows):
        logits = rows @ w.T + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        residual = p / p.sum(1, keepdims=True) - np.eye(classes)[y]
        return np.concatenate([(residual.T @ rows).ravel(), residual.sum(0)]) / len(rows)

    target = gradient(x[:-1])
    one = gradient(x[-1:])
    return float(one @ target / np.linalg.norm(one) / np.linalg.norm(target))


def test_condense_drops_echoes_and_keeps_the_best_aligned_new_text(fake_lm, tmp_path, capsys):
    task = get_task("mr").subset(train_per_class=20, test_size=10, seed=0)
    learner = get_learner("minilm-frozen")
    ds = get_method("condense", candidates=6).distill(task, 2, learner, seed=0)
    assert ds.kind == "text" and ds.hard_labels.tolist() == [0, 0, 1, 1] and len(fake_lm.prompts) == 4
    clusters = ds.log["clusters"]
    assert [c["prompt"] for c in clusters] == fake_lm.prompts
    # the three echoes of each prompt are dropped and counted, the empty answer skipped: the two new texts stay
    assert all(c["generations"] == FakeLM.NEW and c["echoes"] == 3 and c["skipped"] == 1 for c in clusters)
    assert ds.log["echo_generations"] == 12 and ds.log["skipped_generations"] == 4
    assert "dropped 12 as echoes" in capsys.readouterr().out
    ds.save(tmp_path / "set")
    assert json.loads((tmp_path / "set" / "manifest.json").read_text())["log"]["echo_generations"] == 12
    texts, _, _ = task.columns("train")
    model = learner.build(task.num_classes, 0)
    for text, c in zip(ds.texts, clusters):  # the scores and the choice, worked out independently
        y = task.spec.classes.index(c["class"])
        members = [texts[i] for i in c["rows"]]
        scores = [alignment(model, learner.sentence_vectors(members + [g]).astype(np.float64), y, task.num_classes)
                  for g in FakeLM.NEW]
        assert c["scores"] == pytest.approx(scores, abs=1e-4) and abs(scores[0] - scores[1]) > 1e-2
        assert text == FakeLM.NEW[int(np.argmax(scores))] and c["chosen"] == int(np.argmax(scores))
    assert {c["chosen"] for c in clusters} != {0}  # not merely the first candidate


def test_echoes_are_copies_and_near_copies_of_the_prompts_examples():
    members = [("a gorgeous , witty , seductive movie about love and loss .", None), ("ugh", None)]
    assert echoes(("A gorgeous, witty,   seductive movie about love and loss.", None), members, 0.8)
    assert echoes(("a gorgeous , witty , seductive movie about love and money", None), members, 0.8)
    assert echoes(("witty , seductive movie about love", None), members, 0.8)  # a piece of one
    assert not echoes(("a witty film about money and the people who chase it", None), members, 0.8)
    assert not echoes(("ugh , what a waste of two good actors", None), members, 0.8)  # a one-word member
    pair = [("is it raining today", "it rains today")]
    assert echoes(("Is it  raining today", "it rains today"), pair, 0.8)
    assert not echoes(("is the sun out", "the sun shines brightly now"), pair, 0.8)


def test_a_clusters_gradient_is_taken_in_chunks_equal_to_one_forward(fake_lm, monkeypatch):
    """The mean gradient over a cluster, chunk by chunk (token inputs, each chunk trimmed to its own longest
    text), equals the one-forward gradient; condense scores a cluster of 20 in forwards of at most the chunk."""
    task = get_task("mr").subset(train_per_class=20, test_size=10, seed=0)
    texts, _, labels = task.columns("train")
    learner = get_learner("textcnn-glove")
    model = learner.build(2, 0).eval()
    inputs, y = learner.encode(texts[:30]), torch.tensor(labels[:30])
    whole = head_gradient(learner, model, inputs, y)
    torch.testing.assert_close(mean_head_gradient(learner, model, inputs, y, chunk=7), whole, rtol=1e-5, atol=1e-7)

    learner = get_learner("minilm-frozen")
    method = get_method("condense", candidates=6)
    one = method.distill(task, 1, learner, seed=0)
    fake_lm.prompts.clear()
    rows, real_forward = [], learner.forward
    monkeypatch.setattr("textdistill.methods.condense.GRADIENT_CHUNK", 8)
    monkeypatch.setattr(learner, "forward", lambda *a: (rows.append(len(a[2]["features"])), real_forward(*a))[1])
    chunked = method.distill(task, 1, learner, seed=0)
    assert [len(c["rows"]) for c in chunked.log["clusters"]] == [20, 20] and max(rows) == 8
    for c, d in zip(chunked.log["clusters"], one.log["clusters"]):
        assert c["scores"] == pytest.approx(d["scores"], abs=2e-4)
    assert chunked.texts == one.texts


def test_unusable_generations_are_recognised():
    assert parse_generation("Sure!", "positive", pair=False) is None
    assert parse_generation('Write one new sentence labelled "positive" here', "positive", pair=False) is None
    assert parse_generation('\n"A warm, funny film."\nmore', "positive", pair=False) == ("A warm, funny film.", None)
    pair = "Here you go:\nText 1: the cat sat on the mat\n**Text 2:** a cat was sitting on a mat"
    assert parse_generation(pair, "equivalent", pair=True) == ("the cat sat on the mat", "a cat was sitting on a mat")
    assert parse_generation("Text 1: only the first text here", "equivalent", pair=True) is None


def test_a_killed_run_resumes_from_cached_generations(fake_lm):
    task = get_task("mr").subset(train_per_class=20, test_size=10, seed=0)
    learner, method = get_learner("minilm-frozen"), get_method("condense", candidates=6)
    real_generate = fake_lm.generate

    def killed_after_two(prompt, *a, **kw):
        if len(fake_lm.prompts) == 2:
            raise KeyboardInterrupt
        return real_generate(prompt, *a, **kw)

    fake_lm.generate = killed_after_two
    with pytest.raises(KeyboardInterrupt):
        method.distill(task, 2, learner, seed=0)
    fake_lm.generate, fake_lm.prompts = real_generate, []
    resumed = method.distill(task, 2, learner, seed=0)
    assert len(fake_lm.prompts) == 2  # the first two clusters were not asked again
    fake_lm.prompts = []
    again = method.distill(task, 2, learner, seed=0)
    assert fake_lm.prompts == [] and again.texts == resumed.texts


def test_a_pair_task_is_condensed_into_pairs(fake_lm, tmp_path):
    f = tmp_path / "pairs.csv"
    f.write_text("text,other,label\n" + "".join(
        f"the first sentence number {i},and the second part {i},{'ab'[i % 2]}\n" for i in range(16)))
    task = get_task(str(f), pair_col="other", test_size=0.25, seed=0)

    def pairs(prompt, n, *a, **kw):
        fake_lm.prompts.append(prompt)
        return ["Text 1: a new first text here\nText 2: a new second text here", "Sure!"][:n]

    fake_lm.generate = pairs
    ds = get_method("condense", candidates=2).distill(task, 1, get_learner("minilm-frozen"), seed=0)
    assert ds.texts == ["a new first text here"] * 2 and ds.text_pairs == ["a new second text here"] * 2
    assert "Text 1: the first sentence number" in fake_lm.prompts[0] and ds.log["skipped_generations"] == 2


class StubEndpoint(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint on 127.0.0.1; the model name picks its behaviour."""

    calls, bodies = [], []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        StubEndpoint.calls.append(body["model"])
        StubEndpoint.bodies.append(body)
        if body["model"] == "slow":
            time.sleep(1.0)
        if body["model"] == "garbage":
            payload = b"<html>bad gateway</html>"
        else:
            contents = ["A condensed new sentence.", ""] if body["model"] == "half-empty" else ["A condensed line."]
            payload = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                  "choices": [{"index": i, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": c}}
                                              for i, c in enumerate(contents)]}).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:  # the client gave up (the timeout case)
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    StubEndpoint.calls, StubEndpoint.bodies = [], []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_endpoint_success_malformed_answer_and_timeout(endpoint):
    from textdistill.lm import LMUnavailable, OpenAIChat, get_lm

    with pytest.raises(ConfigError, match="openai:URL/MODEL"):
        get_lm("openai:nomodel")

    assert get_lm(f"openai:{endpoint}/ok").generate("write", 1, max_new_tokens=20) == ["A condensed line."]
    assert StubEndpoint.bodies[0]["max_tokens"] == 20 and StubEndpoint.bodies[0]["messages"][0]["content"] == "write"
    # an empty choice comes back as an empty generation, which condense skips and counts
    assert OpenAIChat(f"openai:{endpoint}/half-empty").generate("write", 2) == ["A condensed new sentence.", ""]
    for model, error in [("garbage", "failed 3 times"), ("slow", "failed 3 times; last error: APITimeoutError")]:
        StubEndpoint.calls = []
        lm = OpenAIChat(f"openai:{endpoint}/{model}", timeout=0.3, retries=2, backoff=0.01)
        with pytest.raises(LMUnavailable, match=error) as info:
            lm.generate("write", 1)
        assert StubEndpoint.calls == [model] * 3 and "127.0.0.1" in str(info.value)
