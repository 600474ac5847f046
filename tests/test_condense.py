"""condense: an LM condenses clusters of real examples; gradient alignment picks the generation."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from textdistill.data import get_task
from textdistill.errors import ConfigError
from textdistill.learners import get_learner
from textdistill.methods import get_method
from textdistill.methods.condense import head_gradient, parse_generation


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


def test_condense_keeps_the_best_aligned_generation_per_cluster(fake_lm):
    task = get_task("mr").subset(train_per_class=20, test_size=10, seed=0)
    learner = get_learner("minilm-frozen")
    ds = get_method("condense", candidates=4).distill(task, 2, learner, seed=0)
    assert ds.kind == "text" and ds.hard_labels.tolist() == [0, 0, 1, 1] and len(fake_lm.prompts) == 4
    clusters = ds.log["clusters"]
    assert [c["prompt"] for c in clusters] == fake_lm.prompts and all(len(c["generations"]) == 3 for c in clusters)
    assert all(c["skipped"] == 1 and c["raw"][2] == "" for c in clusters) and ds.log["skipped_generations"] == 4
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


def test_unusable_generations_are_recognised():
    assert parse_generation("Sure!", "positive", pair=False) is None
    assert parse_generation('Write one new sentence labelled "positive" here', "positive", pair=False) is None
    assert parse_generation('\n"A warm, funny film."\nmore', "positive", pair=False) == ("A warm, funny film.", None)
    pair = "Here you go:\nText 1: the cat sat on the mat\n**Text 2:** a cat was sitting on a mat"
    assert parse_generation(pair, "equivalent", pair=True) == ("the cat sat on the mat", "a cat was sitting on a mat")
    assert parse_generation("Text 1: only the first text here", "equivalent", pair=True) is None


def test_a_killed_run_resumes_from_cached_generations(fake_lm):
    task = get_task("mr").subset(train_per_class=20, test_size=10, seed=0)
    learner, method = get_learner("minilm-frozen"), get_method("condense", candidates=4)
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
