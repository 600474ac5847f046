"""Token sets learned as text (text_space project, softmax, gumbel): what the methods optimise is what the text
holds, and every learner trains on it."""

import numpy as np
import pytest
import torch

from textdistill.api import evaluate
from textdistill.errors import ConfigError
from textdistill.learners import get_learner
from textdistill.methods import get_method
from textdistill.methods.learned_set import SyntheticSet, allowed_tokens, gumbel_one_hot
from textdistill.recipe import Recipe
from textdistill.train import train

SMALL = {"bptt": {"outer_steps": 3, "inner_steps": 2, "length": 8, "real_batch": 16},
         "dc": {"outer_loops": 2, "inner_loops": 2, "length": 8, "real_batch": 8}}


@pytest.fixture(scope="module")
def glove(mr_small):
    return get_learner("textcnn-glove").for_task(mr_small)


def make_set(task, learner, text_space, length=8, **options):
    cfg = get_method("bptt", text_space=text_space, length=length, **options).config
    return SyntheticSet.seeded(task, 2, learner, cfg, seed=0)[0]


def captured_set(monkeypatch):
    """The SyntheticSet a method writes, kept when it makes its artifact."""
    seen = []
    original = SyntheticSet.artifact

    def keep(self, *args, **kw):
        seen.append(self)
        return original(self, *args, **kw)

    monkeypatch.setattr(SyntheticSet, "artifact", keep)
    return seen


def test_project_text_holds_exactly_what_bptt_optimised(mr_small, glove, monkeypatch):
    """The text a projected bptt set writes, encoded again by its learner, gives the projected token ids and the
    very embeddings the method's forward read (padding included); a learner reads the same logits from both and
    trains to the same parameters."""
    seen = captured_set(monkeypatch)
    ds = get_method("bptt", text_space="project", **SMALL["bptt"]).distill(mr_small, 2, glove, seed=0)
    (syn,) = seen
    assert ds.kind == "text" and ds.bound_to is None and ds.recipe is None and ds.lrs is None
    assert len(ds.log["learned_lrs"]) == 2 and ds.log["learned_recipe"]["optimizer"] == "sgd"
    assert ds.labels.dtype == torch.float32  # bptt's soft labels, as learned

    optimised = syn.inputs(detach=True)
    mask = optimised["attention_mask"].bool()
    enc = ds.inputs_for(glove)
    width = enc["input_ids"].shape[1]
    assert not mask[:, width:].any()
    assert torch.equal(enc["attention_mask"].bool(), mask[:, :width])
    ids = syn.token_ids()
    assert torch.equal(enc["input_ids"][enc["attention_mask"].bool()], ids[mask])
    model = glove.build(2, seed=7).eval()
    params = dict(model.named_parameters())
    read = glove.input_embeddings(model, params, enc["input_ids"])
    assert torch.equal(read, optimised["inputs_embeds"][:, :width])  # real tokens and padding alike
    assert not optimised["inputs_embeds"][:, width:].any()  # padding: GloVe's zero [PAD] row
    with torch.no_grad():
        torch.testing.assert_close(glove.forward(model, params, optimised), glove.forward(model, params, enc))
    # training on what was optimised is training on the text (train trims both to their longest row)
    recipe = Recipe(steps=5, batch_size=2)
    a = train(glove, glove.build(2, seed=3), optimised, ds.labels, recipe, seed=3)
    b = train(glove, glove.build(2, seed=3), enc, ds.labels, recipe, seed=3)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_project_reads_the_nearest_tokens_with_a_straight_through_gradient(mr_small, glove):
    syn = make_set(mr_small, glove, "project")
    free = ~syn.pinned
    with torch.no_grad():
        syn.x.add_(torch.randn(syn.x.shape, generator=torch.Generator().manual_seed(0)) * 0.6)
    before = syn.start_ids[free]
    read = syn.inputs()["inputs_embeds"]
    ids = syn.token_ids()
    assert (ids[free] != before).any()  # the noise moved some positions to other tokens
    table = torch.nn.functional.normalize(syn.table, dim=-1)
    nearest = syn.candidates[(torch.nn.functional.normalize(syn.x.detach(), dim=-1) @ table.T).argmax(-1)]
    assert torch.equal(ids[free], nearest[free])
    _, vectors = glove.vocabulary()
    assert torch.equal(read.detach(), vectors[ids])
    (read * torch.arange(read.numel()).view_as(read)).sum().backward()
    assert torch.equal(syn.x.grad[free], torch.arange(read.numel()).view_as(read).float()[free])  # identity
    assert not syn.x.grad[syn.pinned].any()
    # an in-place change of x (as an optimiser step) moves the projection with it; an [UNK] position (not a token a
    # text can hold) reads its nearest allowed token
    with torch.no_grad():
        syn.x.copy_(syn.base)
    allowed = torch.isin(syn.start_ids, syn.candidates) | syn.pinned
    assert not allowed.all() and torch.equal(syn.token_ids()[allowed], syn.start_ids[allowed])
    assert torch.isin(syn.token_ids()[~allowed], syn.candidates).all()


def test_softmax_of_one_hot_logits_reads_the_tokens(mr_small, glove):
    syn = make_set(mr_small, glove, "softmax")
    cols = torch.randint(len(syn.candidates), syn.x.shape[:2], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        syn.x.copy_(torch.nn.functional.one_hot(cols, len(syn.candidates)).float() * 1e4)
    ids = torch.where(syn.pinned, syn.start_ids, syn.candidates[cols])
    assert torch.equal(syn.token_ids(), ids)
    model = glove.build(2, seed=0)
    lookup = glove.input_embeddings(model, dict(model.named_parameters()), ids)
    for tau in (1.0, 0.1):
        syn.tau = tau
        torch.testing.assert_close(syn.inputs()["inputs_embeds"], lookup, rtol=0, atol=1e-6)
    torch.testing.assert_close(syn.held_inputs()["inputs_embeds"], lookup, rtol=0, atol=0)


def test_softmax_starts_at_the_real_tokens(mr_small, glove):
    """Init real: each allowed real token starts ln(K) + margin above the rest, so at tau 1 a position reads
    about 1/(1 + e^-margin) of its token; the argmax text is the real rows."""
    syn = make_set(mr_small, glove, "softmax", logit_margin=3.0)
    allowed = torch.isin(syn.start_ids, syn.candidates)
    assert not allowed.all()  # an [UNK] word: it starts at its nearest allowed token, as project reads it
    assert torch.equal(syn.token_ids()[allowed], syn.start_ids[allowed])
    assert torch.equal(syn.token_ids(), make_set(mr_small, glove, "project").token_ids())
    probs = syn.x.detach().softmax(-1).max(-1).values[~syn.pinned]
    torch.testing.assert_close(probs, torch.full_like(probs, 1 / (1 + np.exp(-3.0))), rtol=0, atol=1e-3)


def test_gumbel_samples_are_one_hot_with_a_gradient(mr_small, glove):
    logits = torch.randn(3, 5, 7, requires_grad=True)
    y = gumbel_one_hot(logits, 0.5)
    assert set(y.detach().unique().tolist()) <= {0.0, 1.0} and torch.equal(y.detach().sum(-1), torch.ones(3, 5))
    (y * torch.randn(7)).sum().backward()
    assert logits.grad.abs().sum() > 0

    syn = make_set(mr_small, glove, "gumbel")
    read = syn.inputs()["inputs_embeds"]
    rows = read.detach()[~syn.pinned]
    matches = (rows[:, None, :] == syn.table[None]).all(-1)  # every free position reads exactly one allowed token
    assert torch.equal(matches.sum(-1), torch.ones(len(rows), dtype=torch.long))
    read.pow(2).sum().backward()
    assert syn.x.grad[~syn.pinned].abs().sum() > 0


def test_tau_anneals_geometrically(mr_small, glove):
    syn = make_set(mr_small, glove, "gumbel", tau_start=1.0, tau_end=0.01)
    syn.anneal(0, 3)
    assert syn.tau == 1.0
    syn.anneal(1, 3)
    assert syn.tau == pytest.approx(0.1)
    syn.anneal(2, 3)
    assert syn.tau == pytest.approx(0.01)


def test_vocabulary_task_or_full(mr_small, glove):
    tokens, table = glove.vocabulary()
    task = allowed_tokens(mr_small, glove, tokens, "task")
    texts, _, _ = mr_small.columns("train")
    words = {w for t in texts for w in glove.detokenize([tokens[i] for i in glove.encode([t])["input_ids"][0]]).split()}
    assert {tokens[i] for i in task.tolist()} == words  # the split's words, no [PAD] or [UNK]
    full = allowed_tokens(mr_small, glove, tokens, "full")
    assert len(full) == len(tokens) - 2 and {0, 1}.isdisjoint(full.tolist())


def test_minilm_keeps_its_frame(mr_small):
    """A transformer's [CLS] and [SEP] stay where its encoding puts them, also in a noise set and in a cut text,
    so the text of the initial set encodes again to its tokens."""
    learner = get_learner("minilm").for_task(mr_small)
    tok = learner.tokenizer
    syn = make_set(mr_small, learner, "project", length=12)
    ids, mask = syn.token_ids(), syn.fixed["attention_mask"].bool()
    assert (ids[:, 0] == tok.cls_token_id).all()
    assert all(row[m][-1] == tok.sep_token_id for row, m in zip(ids, mask))  # cut rows keep their [SEP]
    ds = syn.artifact(get_method("bptt", text_space="project"), mr_small, 0)
    enc = learner.encode(ds.texts)
    assert torch.equal(enc["input_ids"], ids[:, : enc["input_ids"].shape[1]])
    noise = make_set(mr_small, learner, "softmax", length=12, init="noise")
    assert (noise.token_ids()[:, 0] == tok.cls_token_id).all() and (noise.token_ids()[:, -1] == tok.sep_token_id).all()
    assert noise.pinned[:, [0, -1]].all() and not noise.pinned[:, 1:-1].any()


@pytest.mark.parametrize("method", ["bptt", "dc"])
@pytest.mark.parametrize("space", ["project", "softmax", "gumbel"])
def test_text_space_sets_train_other_learners(method, space, mr_small, glove, tmp_path):
    ds = get_method(method, text_space=space, **SMALL[method]).distill(mr_small, 2, glove, seed=0)
    assert ds.kind == "text" and len(ds.texts) == 4 and all(ds.texts) and ds.bound_to is None
    assert ds.config["text_space"] == space and ds.made_with["id"] == "textcnn-glove"
    assert ds.hard_labels.tolist() == [0, 0, 1, 1]
    ds.save(tmp_path / "set")
    results = evaluate(mr_small, ds, learners=["textcnn-glove", "minilm-frozen"], seeds=1, progress=False,
                       recipe={"steps": 20})
    assert [r.learner for r in results] == ["textcnn-glove", "minilm-frozen"]
    assert all(len(r.runs) == 1 and r.accuracy_mean is not None and r.recipe["steps"] == 20 for r in results)
    again = get_method(method, text_space=space, **SMALL[method]).distill(mr_small, 2, glove, seed=0)
    assert again.texts == ds.texts  # seeded, gumbel samples included


def test_dm_and_mtt_write_text(mr_small, glove):
    ds = get_method("dm", text_space="softmax", iterations=2, length=8, labels="soft").distill(mr_small, 1, glove)
    assert ds.kind == "text" and ds.labels.shape == (2, 2)  # a teacher's labels, of the text
    ds = get_method("mtt", text_space="gumbel", iterations=2, experts=1, expert_epochs=2, max_start_epoch=1,
                    match_epochs=1, syn_steps=2, length=8).distill(mr_small, 1, glove)
    assert ds.kind == "text" and ds.recipe is None and ds.log["learned_recipe"]["optimizer"] == "sgd"


def test_embeddings_configs_keep_their_keys():
    """The default space records none of the text options, so sets and bench cells made before keep their keys;
    a text space records them all."""
    assert "text_space" not in get_method("dc").config.to_dict()
    cfg = get_method("dc", text_space="gumbel").config.to_dict()
    assert {"text_space", "vocabulary", "logit_lr", "logit_margin", "tau_start", "tau_end"} <= set(cfg)
    assert get_method("dc", **cfg).config.to_dict() == cfg


def test_option_checks(mr_small):
    with pytest.raises(ConfigError, match="text_space must be one of"):
        get_method("bptt", text_space="tokens")
    with pytest.raises(ConfigError, match="vocabulary must be"):
        get_method("dc", text_space="softmax", vocabulary="all")
    with pytest.raises(ConfigError, match="use --vocabulary full"):
        get_method("dc", text_space="project", init="noise", dp_epsilon=4.0)
    get_method("dc", text_space="project", init="noise", dp_epsilon=4.0, vocabulary="full")
    with pytest.raises(ConfigError, match="needs a learner that reads"):
        get_method("dm", text_space="project", iterations=1).distill(mr_small, 1, get_learner("minilm-frozen"))
    with pytest.raises(ConfigError, match="text set does not keep"):
        get_method("attention-labels", text_space="project", outer_steps=1, inner_steps=1, length=6).distill(
            mr_small, 1, get_learner("minilm"))


def test_options_are_listed(capsys):
    from textdistill.cli import main

    assert main(["list", "methods", "--options"]) == 0
    out = capsys.readouterr().out
    for option in ("--text-space (default: embeddings)", "--vocabulary (default: task)", "--tau-start", "--tau-end",
                   "--logit-lr", "--logit-margin"):
        assert out.count(option) >= 5, option  # bptt, attention-labels, dc, dm, mtt


@pytest.mark.parametrize("learner_name", ["textcnn-glove", "minilm"])
def test_pair_task_writes_pairs_that_encode_to_the_set(learner_name, tmp_path, monkeypatch):
    """A pair set's text and text_pair, joined again by the learner's encoding, give the tokens that were
    optimised: GloVe's separator is a token like any other, a transformer's [SEP] between the two is pinned."""
    from textdistill.data import get_task

    f = tmp_path / "pairs.csv"
    f.write_text("text,other,label\n" + "".join(f"first sentence {i},second part {i},{'ab'[i % 2]}\n" for i in range(12)))
    task = get_task(str(f), pair_col="other", test_size=0.25, seed=0)
    learner = get_learner(learner_name).for_task(task)
    seen = captured_set(monkeypatch)
    ds = get_method("bptt", text_space="project", outer_steps=1, inner_steps=1, length=12, real_batch=4).distill(
        task, 1, learner, seed=0)
    (syn,) = seen
    assert ds.kind == "text" and len(ds.text_pairs) == len(ds.texts) == 2
    enc = learner.encode(ds.texts, ds.text_pairs)
    mask = syn.fixed["attention_mask"].bool()
    assert torch.equal(enc["input_ids"][enc["attention_mask"].bool()], syn.token_ids()[mask])
    if "token_type_ids" in enc:
        assert torch.equal(enc["token_type_ids"][enc["attention_mask"].bool()], syn.fixed["token_type_ids"][mask])


def test_private_dc_writes_text_from_the_whole_vocabulary(mr_small, glove):
    """A DP run reads no training token: it starts from noise over the full vocabulary, and the text it publishes
    names no training row."""
    ds = get_method("dc", dp_epsilon=8.0, init="noise", text_space="project", vocabulary="full", outer_loops=1,
                    inner_loops=2, length=4, real_batch=3).distill(mr_small, 1, glove, seed=0)
    assert ds.kind == "text" and ds.source_indices is None and "fingerprint" not in ds.task
    assert ds.provenance.dp["steps"] == 2
    assert len(ds.texts) == 2 and all(ds.texts)
