"""condense: an LM condenses mixed-class subsets of real examples and reward models pick its answers (select
reward, the default); or it condenses per-class clusters and gradient alignment picks (select gradient)."""

import json
import re
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
    """Deterministic candidates. To a per-class prompt (select gradient): echoes of the prompt's own examples (a copy
    in other case and spacing, one with its last word changed, two joined), an empty answer, and two new texts (an
    off-topic one and a review). To a mixed-class prompt (select reward): an echo of its first example after a line
    of chatter, a new review for each label it names, the same reviews under each other's labels, an empty answer."""

    name = "fake"
    NEW = ["the weather report for tuesday", "an uneven picture that still finds moments of real grace"]
    REVIEWS = {"positive": "a warm , funny and moving film with a superb cast",
               "negative": "a dull , tedious mess with wooden acting and no laughs"}

    def __init__(self):
        self.prompts = []

    def generate(self, prompt, n, max_new_tokens=40, seed=0, **kw):
        self.prompts.append(prompt)
        examples = [line[2:] for line in prompt.splitlines() if line.startswith("- ")]
        if "one per line as" in prompt:
            labels = re.search(r"Use only these labels: (.*?)\. ", prompt).group(1).split(", ")
            reviews = [self.REVIEWS.get(label, f"a fresh example written for {label}") for label in labels]
            mine = "\n".join(f"{label}: {review}" for label, review in zip(labels, reviews))
            swapped = "\n".join(f"{label}: {review}" for label, review in zip(labels, reviews[1:] + reviews[:1]))
            return ((["Here are the new sentences:\n" + examples[0], mine, swapped, ""]) * n)[:n]
        echoes = ["  " + examples[0].upper().replace(" ", "   "), examples[1].rsplit(" ", 1)[0] + " indeed",
                  " ".join(examples[:2])]
        return ((echoes + [""] + self.NEW) * n)[:n]


@pytest.fixture
def fake_lm(monkeypatch, tmp_path):
    monkeypatch.setenv("TEXTDISTILL_CACHE", str(fresh_cache(tmp_path)))  # generations are cached by prompt
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


def test_gradient_select_drops_echoes_and_keeps_the_best_aligned_new_text(fake_lm, tmp_path, capsys):
    task = get_task("mr").subset(train_per_class=20, test_size=10, seed=0)
    learner = get_learner("minilm-frozen")
    ds = get_method("condense", select="gradient", candidates=6).distill(task, 2, learner, seed=0)
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
    method = get_method("condense", select="gradient", candidates=6)
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


def test_a_killed_gradient_run_resumes_from_cached_generations(fake_lm):
    task = get_task("mr").subset(train_per_class=20, test_size=10, seed=0)
    learner, method = get_learner("minilm-frozen"), get_method("condense", select="gradient", candidates=6)
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


def test_a_pair_task_is_condensed_into_pairs_by_the_gradient_rule(fake_lm, tmp_path):
    f = tmp_path / "pairs.csv"
    f.write_text("text,other,label\n" + "".join(
        f"the first sentence number {i},and the second part {i},{'ab'[i % 2]}\n" for i in range(16)))
    task = get_task(str(f), pair_col="other", test_size=0.25, seed=0)

    def pairs(prompt, n, *a, **kw):
        fake_lm.prompts.append(prompt)
        return ["Text 1: a new first text here\nText 2: a new second text here", "Sure!"][:n]

    fake_lm.generate = pairs
    ds = get_method("condense", select="gradient", candidates=2).distill(task, 1, get_learner("minilm-frozen"), seed=0)
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


# -- select: reward (CondenseLM's reward matching) -----------------------------------------------------------------

TOPICS = {
    "sports": ["the striker scored a late goal to win the football match", "the tennis player served an ace to take "
               "the final set", "the goalkeeper saved a penalty in the cup final", "the sprinter broke the world "
               "record in the hundred metres", "the team won the league after a tense season of matches", "the boxer "
               "knocked out his rival in the third round", "the cyclist climbed the mountain stage to take the yellow "
               "jersey", "the coach praised the defenders after the clean sheet", "the basketball team scored twenty "
               "points in the last quarter", "the swimmer won gold in the relay at the championships", "the referee "
               "showed a red card to the midfielder", "fans cheered as the home side equalised in extra time", "the "
               "golfer sank a long putt on the eighteenth hole", "the marathon runner crossed the finish line first",
               "the rugby captain scored a try in the second half", "the cricket batsman hit a century at the stadium"],
    "cooking": ["simmer the onions in butter until they are soft and golden", "knead the bread dough and let it rise "
                "for an hour", "whisk the eggs with sugar before folding in the flour", "season the soup with salt "
                "and pepper and fresh thyme", "roast the chicken in a hot oven with garlic and lemon", "chop the "
                "tomatoes and basil for a fresh pasta sauce", "bake the cake until a skewer comes out clean", "fry the "
                "potatoes in olive oil until crisp", "stir the risotto slowly while adding warm stock", "marinate the "
                "beef overnight in soy sauce and ginger", "melt the chocolate gently over a pan of simmering water",
                "grate the cheese over the casserole before baking", "boil the rice and drain it before serving with "
                "curry", "slice the carrots thinly and steam them for five minutes", "sprinkle the salad with toasted "
                "seeds and a lemon dressing", "cool the pastry in the fridge before rolling it out"],
    "finance": ["the central bank raised interest rates to curb inflation", "shares fell sharply as investors sold "
                "technology stocks", "the company reported record quarterly profits and revenue", "bond yields rose "
                "after the inflation figures were published", "the startup raised fifty million dollars from venture "
                "investors", "the currency weakened against the dollar on trade fears", "the bank cut its growth "
                "forecast for the economy", "oil prices climbed after producers agreed to cut output", "the merger "
                "will create the largest insurer in the market", "pension funds moved money from equities into bonds",
                "the stock exchange closed higher on strong earnings", "mortgage lending slowed as house prices fell",
                "the firm issued new shares to pay down its debt", "analysts expect the retailer to report lower "
                "margins", "the budget deficit widened as tax revenues dropped", "the fund manager bought shares in "
                "mining companies"],
}


@pytest.fixture(scope="module")
def topics(tmp_path_factory):
    """Three topics that a probe on frozen MiniLM vectors tells apart (12 training sentences each)."""
    f = tmp_path_factory.mktemp("topics") / "topics.csv"
    f.write_text("text,label\n" + "".join(f"{t},{label}\n" for label, texts in TOPICS.items() for t in texts))
    return get_task(str(f), test_size=0.25, seed=0)


class Scripted:
    """An LM with fixed answers; ``{echo}`` in one stands for the first example line of its prompt."""

    name = "scripted"

    def __init__(self, answers):
        self.answers, self.prompts = answers, []

    def generate(self, prompt, n, max_new_tokens=40, seed=0, **kw):
        self.prompts.append(prompt)
        first = next(line[2:] for line in prompt.splitlines() if line.startswith("- "))
        return [a.replace("{echo}", first) for a in self.answers][:n]


def probabilities(task, texts):
    """M_rep's class probabilities for ``texts``: the cached minilm-frozen teacher of the task."""
    from textdistill.methods.teacher import teacher_logits

    return teacher_logits(task, "minilm-frozen", texts, None).softmax(-1).numpy()


def test_rewards_put_a_clear_uncovered_example_above_a_covered_or_an_ambiguous_one(topics):
    from textdistill.methods.condense import coverage_probabilities, rewards

    classes, learner = topics.spec.classes, get_learner("minilm-frozen").for_task(topics)
    probes = [("the lender raised its mortgage rates again this month", "finance"),  # clear, and no finance yet
              ("the midfielder curled a free kick into the top corner", "sports"),  # clear, but sports is covered
              ("the chef cooked pasta for the football team after the match", "cooking")]  # ambiguous
    texts, y = [t for t, _ in probes], [classes.index(c) for _, c in probes]
    rep = probabilities(topics, texts)
    # the set so far: a sports and a cooking example, nothing of finance
    seen = ["the winger crossed for the striker to head in the winner", "slowly stir the custard over a low heat"]
    cov = coverage_probabilities(learner.sentence_vectors(seen, cache=False), [classes.index("sports"),
                                 classes.index("cooking")], 3, learner.sentence_vectors(texts, cache=False))
    assert cov[:, classes.index("finance")].tolist() == [0, 0, 0] and cov.sum(1) == pytest.approx([1, 1, 1])
    r_rep, r_cov = rewards(rep, cov, y)
    assert r_rep.tolist() == pytest.approx([rep[i, y[i]] for i in range(3)])
    assert r_cov.tolist() == pytest.approx([rep[i, y[i]] - cov[i, y[i]] for i in range(3)])
    clear, covered, ambiguous = 0, 1, 2
    assert r_rep[clear] > r_rep[ambiguous] + 0.1 and r_cov[clear] > r_cov[covered] + 0.3
    score = r_rep + 0.2 * r_cov
    assert score[clear] > max(score[covered], score[ambiguous])
    # before anything is condensed M_cov is uniform; while one class only is, it predicts that class
    assert coverage_probabilities(np.zeros((0, 384)), [], 3, np.ones((2, 384))) == pytest.approx(np.full((2, 3), 1 / 3))
    assert coverage_probabilities(np.ones((2, 384)), [2, 2], 3, np.ones((1, 384))).tolist() == [[0, 0, 1]]


def test_best_of_n_keeps_the_answer_with_the_largest_summed_reward(topics, monkeypatch, tmp_path):
    """Four answers to the one prompt of dpc 1: three examples with a weak one, one with an echo, a surplus example
    and a wrong class after a line of chatter, three clear examples (third, so neither the first nor the longest
    answer), an empty one. The chosen subset is the one whose summed R_rep + w R_cov, worked out here, is largest."""
    monkeypatch.setenv("TEXTDISTILL_CACHE", str(fresh_cache(tmp_path)))
    answers = ["cooking: whisk the cream until it forms soft peaks\nfinance: the insurer lost money on storm claims "
               "this year\nsports: the chef cooked pasta for the football team after the match",
               "Here are three new sentences:\n{echo}\ncooking: fry the onions and garlic in a little oil\ncooking: "
               "toast the bread and spread it with butter\nfinance: the goalkeeper saved a shot in the final minute",
               "1. cooking: peel the apples and bake them with cinnamon\n2. finance: the lender raised its mortgage "
               "rates again\n3. sports: the midfielder curled a free kick into the top corner",
               ""]
    lm = Scripted(answers)
    monkeypatch.setattr("textdistill.lm.get_lm", lambda name, device="cpu": lm)
    w = 0.2
    ds = get_method("condense", candidates=4, subset_size=6, condensed_size=3, rep_threshold=0.5, cov_threshold=0.0,
                    coverage_weight=w).distill(topics, 1, get_learner("minilm-frozen"), seed=0)
    classes = topics.spec.classes
    (it,) = ds.log["iterations"]
    texts, _, labels = topics.columns("train")
    # retrieval: two of each class, each above the thresholds (M_cov is uniform before anything is condensed)
    assert it["relaxed"] == 0 and sorted(labels[i] for i in it["rows"]) == [0, 0, 1, 1, 2, 2]
    rep_rows = probabilities(topics, [texts[i] for i in it["rows"]])[np.arange(6), [labels[i] for i in it["rows"]]]
    assert (rep_rows >= 0.5).all() and (rep_rows - 1 / 3 >= 0.0).all()
    assert "Use only these labels: cooking, finance, sports." in lm.prompts[0]
    assert f"- {classes[labels[it['rows'][0]]]}: {texts[it['rows'][0]]}" in lm.prompts[0]
    # the fates and the sums, worked out independently
    expected, sums = [], []
    for j, answer in enumerate(answers):
        lines = [line.split(". ", 1)[-1].split(": ", 1) for line in answer.replace("{echo}", "ECHO").splitlines()]
        lines = [(label, text) for label, text in (pair for pair in lines if len(pair) == 2) if label in classes]
        p = probabilities(topics, [t for _, t in lines]) if lines else np.zeros((0, 3))
        left, fates, total = {c: 1 for c in classes}, [], 0.0
        for (label, _), probs in zip(lines, p):
            if probs.argmax() != classes.index(label):
                fates.append("inconsistent")
            elif not left[label]:
                fates.append("surplus")
            else:
                left[label] -= 1
                fates.append("kept")
                total += probs[classes.index(label)] + w * (probs[classes.index(label)] - 1 / 3)
        expected.append(fates)
        sums.append(total)
    logged = it["answers"]
    assert [a["score"] for a in logged] == pytest.approx(sums, abs=1e-3)
    echo_line = [e for e in logged[1]["examples"] if e["fate"] == "echo"]
    assert len(echo_line) == 1 and echo_line[0]["text"] == texts[it["rows"][0]]
    assert [[e["fate"] for e in a["examples"] if e["fate"] != "echo"] for a in logged] == expected
    assert "inconsistent" in expected[1] and "surplus" in expected[1] and expected[2] == ["kept"] * 3
    assert it["chosen"] == int(np.argmax(sums)) == 2 and sums[2] > sums[0] > 0
    assert ds.texts == ["peel the apples and bake them with cinnamon", "the lender raised its mortgage rates again",
                        "the midfielder curled a free kick into the top corner"]
    assert ds.hard_labels.tolist() == [0, 1, 2]
    # what the filter dropped is counted and never written
    assert ds.log["echo_generations"] == 1 and ds.log["skipped_generations"] == 2  # the chatter, the empty answer
    assert ds.log["inconsistent_generations"] == sum(f.count("inconsistent") for f in expected)
    assert ds.log["surplus_generations"] == sum(f.count("surplus") for f in expected)
    assert "the goalkeeper saved a shot in the final minute" not in ds.texts and ds.log["fallback_iterations"] == 0


def fresh_cache(tmp_path):
    """A cache of its own (for generations), sharing only the inputs (models, downloads) with the user's."""
    from textdistill.cache import INPUTS
    from textdistill.resources import cache_dir

    cache = tmp_path / "cache"
    cache.mkdir()
    for kind in INPUTS:
        (cache / kind).symlink_to(cache_dir() / kind)
    return cache


def test_the_shared_filter_drops_a_wrong_class_and_an_echoed_candidate(topics):
    from textdistill.methods.generation_filter import label_consistent

    classes = topics.spec.classes
    members = [("knead the bread dough and let it rise for an hour", None)]
    candidates = [("knead the bread dough and let it rise for one hour", "cooking"),  # an echo
                  ("the goalkeeper saved a shot in the final minute", "cooking"),  # the wrong class
                  ("peel the apples and bake them with cinnamon", "cooking")]
    scores = probabilities(topics, [t for t, _ in candidates])
    ok = label_consistent(torch.from_numpy(scores), [classes.index(c) for _, c in candidates])
    assert ok.tolist() == [True, False, True]
    assert [echoes((t, None), members, 0.8) for t, _ in candidates] == [True, False, False]
    for bad in ([0], [0, 3]):
        with pytest.raises(ConfigError, match="label_consistent"):
            label_consistent(np.zeros((2, 3)), bad)


def test_kcenter_retrieval_mixes_classes_and_respects_thresholds():
    from textdistill.methods.condense import quotas, retrieve

    # one class left of 0, the other right of it; the outermost of each fails the thresholds
    xs = np.array([-10.0, -3, -2, -1, 1, 2, 3, 10])
    vectors, labels = np.stack([xs, np.zeros(8)], 1), np.array([0, 0, 0, 0, 1, 1, 1, 1])
    eligible = np.array([False, True, True, True, True, True, True, False])
    available = np.ones(8, dtype=bool)
    available[3] = False  # retrieved before, at -1: a centre now
    rows, relaxed = retrieve(vectors, labels, eligible, available, np.zeros(8), {0: 2, 1: 2},
                             np.random.default_rng(0), centres=np.array([3]))
    # farthest first from -1 among the eligible rows, two of each class: 3, then -3 (as far as 1), then 1, then -2
    assert xs[rows].tolist() == [3, -3, 1, -2] and relaxed == 0
    # from a random start, still two of each class, never an ineligible or a used row
    for seed in range(5):
        rows, _ = retrieve(vectors, labels, eligible, available, np.zeros(8), {0: 2, 1: 2},
                           np.random.default_rng(seed))
        assert sorted(labels[rows].tolist()) == [0, 0, 1, 1] and eligible[rows].all() and available[rows].all()
    # a class short of eligible rows is topped up with its best-rewarded ones below the thresholds
    eligible = np.array([True, True, True, True, True, False, False, False])
    score = np.array([0, 0, 0, 0, 0, 0.1, 0.2, 0.9])
    rows, relaxed = retrieve(vectors, labels, eligible, available, score, {0: 1, 1: 2}, np.random.default_rng(0))
    assert relaxed == 1 and sorted(xs[rows].tolist())[1:] == [1, 10]
    assert quotas([3, 0, 5], 5) == {2: 3, 0: 2} and quotas([1, 1, 1], 2) == {0: 1, 1: 1}
    assert quotas([2, 2], 20) == {0: 10, 1: 10} and quotas([0, 0], 4) == {}


def test_labelled_answers_are_parsed_line_by_line():
    from textdistill.methods.condense import parse_labelled

    raw = ("Here you go:\n1. Positive: A warm, funny film about love.\n- [negative] - a dull and tedious mess\n"
           "* neutral: not one of the labels\nnegative: too short\npositive: the condensed sentence of them all\n")
    found, skipped = parse_labelled(raw, ("negative", "positive"), pair=False)
    assert found == [(1, "A warm, funny film about love.", None), (0, "a dull and tedious mess", None)]
    assert skipped == 4  # chatter, an unknown label, too short, about the task rather than of it
    assert parse_labelled("  \n", ("negative", "positive"), pair=False) == ([], 1)
    # a copied prompt line keeps its mark: one label counts once, two different ones make no example
    doubled = ("negative: negative: leaves blue\npositive: negative: a warm and funny film\n"
               "- negative: - negative: dull, flat and tedious")
    assert parse_labelled(doubled, ("negative", "positive"), pair=False) == ([(0, "dull, flat and tedious", None)], 2)
    about = "negative: The sentences contain strong negative language and negative descriptors."
    assert parse_labelled(about, ("negative", "positive"), pair=False) == ([], 1)
    pairs = "entailment: a man sleeps soundly || a person is resting\nneutral: only one text written here"
    assert parse_labelled(pairs, ("entailment", "neutral"), pair=True) == (
        [(0, "a man sleeps soundly", "a person is resting")], 1)


def test_reward_options_are_checked():
    for options, what in [({"select": "best"}, "select"), ({"subset_size": 10, "condensed_size": 6}, "condensed_size"),
                          ({"reward_model": "no-such-learner"}, "unknown learner")]:
        with pytest.raises(ConfigError, match=what):
            get_method("condense", **options)
    get_method("condense", select="gradient", reward_model="no-such-learner")  # not used by the gradient rule


def test_a_killed_reward_run_resumes_from_cached_answers(fake_lm):
    task = get_task("mr").subset(train_per_class=20, test_size=10, seed=0)
    learner, method = get_learner("minilm-frozen"), get_method("condense", subset_size=4, condensed_size=2)
    real_generate = fake_lm.generate

    def killed_after_one(prompt, *a, **kw):
        if len(fake_lm.prompts) == 1:
            raise KeyboardInterrupt
        return real_generate(prompt, *a, **kw)

    fake_lm.generate = killed_after_one
    with pytest.raises(KeyboardInterrupt):
        method.distill(task, 2, learner, seed=0)
    fake_lm.generate, fake_lm.prompts = real_generate, []
    resumed = method.distill(task, 2, learner, seed=0)
    iterations = resumed.log["iterations"]
    assert len(iterations) >= 2 and len(fake_lm.prompts) == len(iterations) - 1  # the first was not asked again
    assert sorted(resumed.hard_labels.tolist()) == [0, 0, 1, 1]
    fake_lm.prompts = []
    again = method.distill(task, 2, learner, seed=0)
    assert fake_lm.prompts == [] and again.texts == resumed.texts and again.log == resumed.log


def test_a_pair_task_is_condensed_into_pairs_by_the_reward_rule(fake_lm, tmp_path):
    f = tmp_path / "pairs.csv"
    f.write_text("text,other,label\n" + "".join(
        f"the first sentence number {i},and the second part {i},{'ab'[i % 2]}\n" for i in range(16)))
    task = get_task(str(f), pair_col="other", test_size=0.25, seed=0)

    def pairs(prompt, n, *a, **kw):
        fake_lm.prompts.append(prompt)
        return ["a: a new first text here || a new second text here\nb: another first text || another second one",
                "Sure!"][:n]

    fake_lm.generate = pairs
    ds = get_method("condense", candidates=2, subset_size=4, condensed_size=2).distill(
        task, 1, get_learner("minilm-frozen"), seed=0)
    assert sorted(ds.hard_labels.tolist()) == [0, 1] and len(ds.text_pairs) == 2 and all(ds.text_pairs)
    assert '"label: first text || second text"' in fake_lm.prompts[0]
    assert re.search(r"^- [ab]: the first sentence number \d+ \|\| and the second part \d+$", fake_lm.prompts[0], re.M)
    first = ds.log["iterations"][0]["answers"][0]["examples"]
    assert [(e["class"], e["text"], e["pair"]) for e in first] == [
        ("a", "a new first text here", "a new second text here"), ("b", "another first text", "another second one")]
    assert ds.log["skipped_generations"] >= 1  # "Sure!"


@pytest.mark.slow
def test_reward_select_end_to_end_with_the_offline_writer():
    """The real writer (smollm2-135m) on real MR sentences, 1 per class: the set has the right counts per class, every
    answer and choice in its log."""
    from collections import Counter

    task = get_task("mr").subset(train_per_class=100, test_size=10, seed=0)
    ds = get_method("condense", candidates=2, max_new_tokens=24, subset_size=6, condensed_size=2).distill(
        task, 1, get_learner("minilm-frozen"), seed=0)
    assert ds.kind == "text" and Counter(ds.hard_labels.tolist()) == {0: 1, 1: 1}
    assert all(isinstance(t, str) and t.strip() for t in ds.texts)
    log = ds.log
    assert log["select"] == "reward" and log["llm"] == "smollm2-135m"
    assert all(len(it["raw"]) == 2 and len(it["answers"]) == 2 for it in log["iterations"])
    added = [tuple(a) for it in log["iterations"] for a in it["added"]]
    assert sorted(added) == sorted(zip([task.spec.classes[c] for c in ds.hard_labels.tolist()], ds.texts))
