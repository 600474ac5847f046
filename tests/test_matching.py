"""DC, DM and MTT: each matching loss is zero when the synthetic set equals the real data and falls on a
tiny task; expert trajectories resume after an interruption."""

import numpy as np
import pytest
import torch

from textdistill.learners import get_learner
from textdistill.methods import dc as dc_module
from textdistill.methods import get_method, mtt as mtt_module
from textdistill.methods.matching import gradient_distance
from textdistill.methods.dm import distribution_distance
from textdistill.methods.mtt import MTTConfig, buffer
from textdistill.methods.trajectory import epoch_params, trajectory_loss
from textdistill.methods.learned_set import SyntheticSet, fresh_parameters, real_inputs
from textdistill.train import Recipe, train


@pytest.fixture(scope="module")
def frozen():
    return get_learner("minilm-frozen")


def whole_class_set(task, learner):
    """A synthetic set that is exactly the training split (every example of every class)."""
    return SyntheticSet(task, 12, learner, np.random.default_rng(0))


def test_distances_are_zero_for_equal_inputs_and_positive_otherwise():
    g = [torch.randn(4, 3), torch.randn(4)]
    assert float(gradient_distance(g, g)) == pytest.approx(0, abs=1e-6)
    assert float(gradient_distance(g, [x + 1 for x in g])) > 0
    assert float(gradient_distance(g, g, "mse")) == 0
    x = torch.randn(10, 5)
    for kernel in ("mean", "mmd"):
        assert float(distribution_distance(x, x[torch.randperm(10)], kernel)) == pytest.approx(0, abs=1e-6)
        assert float(distribution_distance(x, x + 0.5, kernel)) > 0
    p = {"w": torch.randn(3, 2)}
    assert float(trajectory_loss(p, {"w": p["w"] + 1}, p)) == 0


def test_cos_distance_leaves_out_one_dimensional_tensors_like_the_reference():
    g = torch.Generator().manual_seed(0)
    wa, wb, ba, bb = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g), torch.randn(4), torch.randn(4)
    assert gradient_distance([wa, ba], [wb, bb], "cos") == gradient_distance([wa], [wb], "cos")
    assert gradient_distance([wa, ba], [wa, -ba], "cos") < 1e-6  # opposite biases: still 0, as in distance_wb
    assert gradient_distance([wa, ba], [wb, bb], "mse") > gradient_distance([wa], [wb], "mse")  # mse keeps them


def test_dc_matching_loss_is_zero_on_the_real_data_and_falls(mr_small, frozen):
    syn = whole_class_set(mr_small, frozen)
    real, y, per_class = real_inputs(mr_small, frozen)
    method = get_method("dc", real_batch=12)
    model = frozen.build(2, seed=0)
    params = fresh_parameters(model)
    names = [k for k, v in model.named_parameters()]
    loss = method.matching_loss(frozen, model, params, names, syn, real, y, per_class, np.random.default_rng(0))
    assert loss.item() == pytest.approx(0, abs=1e-5)

    ds = get_method("dc", outer_loops=1, inner_loops=15, net_steps=0, real_batch=12, outer_lr=0.05).distill(
        mr_small, 2, frozen, seed=0)
    curve = ds.log["matching_loss"]
    assert curve[-1] < 0.5 * curve[0]


def test_dm_loss_is_zero_on_the_real_data_and_falls(mr_small, frozen):
    syn = whole_class_set(mr_small, frozen)
    real, _, per_class = real_inputs(mr_small, frozen)
    model = frozen.build(2, seed=0)
    for c, rows in enumerate(per_class):
        real_emb = frozen.embed(model, fresh_parameters(model), {k: v[rows] for k, v in real.items()})
        syn_emb = frozen.embed(model, fresh_parameters(model), syn.inputs(syn.rows_of(c)))
        assert distribution_distance(syn_emb, real_emb, "mmd").item() == pytest.approx(0, abs=1e-5)
    ds = get_method("dm", iterations=30, real_batch=12, outer_lr=0.01).distill(mr_small, 2, frozen, seed=0)
    curve = ds.log["matching_loss"]
    assert curve[-1] < 0.2 * curve[0]


def test_a_student_trained_on_the_real_data_follows_the_expert(mr_small, frozen, tmp_path):
    """Full-batch experts (one step an epoch): a student taking the same steps on the same data lands on
    the expert's later parameters, so the trajectory loss is zero."""
    n = len(mr_small.train)
    cfg = MTTConfig(experts=1, expert_epochs=3, expert_batch=n, expert_lr=0.1, max_start_epoch=1, match_epochs=2,
                    buffer_dir=str(tmp_path))
    (path,) = buffer(mr_small, frozen, cfg, progress=False)
    from safetensors.torch import load_file

    trajectory = load_file(str(path))
    start, target = epoch_params(trajectory, 0), epoch_params(trajectory, 2)
    real, y, _ = real_inputs(mr_small, frozen)
    student = train(frozen, frozen.build(2, 0), real, y, Recipe(steps=2, lr=0.1, batch_size=n, warmup=0.0,
                    schedule="constant", weight_decay=0.0, optimizer="sgd"), seed=0,
                    params={k: v.clone().requires_grad_(True) for k, v in start.items()}, differentiable=True)
    assert trajectory_loss(student, start, target).item() == pytest.approx(0, abs=1e-6)

    ds = get_method("mtt", experts=1, expert_epochs=3, max_start_epoch=1, match_epochs=2, syn_steps=5,
                    iterations=30, outer_lr=0.05, buffer_dir=str(tmp_path / "b")).distill(mr_small, 2, frozen)
    curve = ds.log["trajectory_loss"]
    assert curve[-1] < 0.5 * curve[0]
    assert ds.recipe["lr"] == pytest.approx(ds.log["learned_lr"]) and ds.recipe["optimizer"] == "sgd"


def test_expert_buffer_resumes_after_an_interruption(mr_small, frozen, tmp_path, monkeypatch):
    cfg = MTTConfig(experts=3, expert_epochs=2, max_start_epoch=1, match_epochs=1, buffer_dir=str(tmp_path))
    calls = []
    real_train = mtt_module.train

    def interrupted(*args, **kw):
        if len(calls) == 3:  # two epochs of expert 0, then one of expert 1
            raise KeyboardInterrupt
        calls.append(1)
        return real_train(*args, **kw)

    monkeypatch.setattr(mtt_module, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        buffer(mr_small, frozen, cfg, progress=False)
    folder = next(tmp_path.iterdir())
    assert sorted(p.name for p in folder.glob("*.safetensors")) == ["expert-0.safetensors"]

    calls.clear()
    monkeypatch.setattr(mtt_module, "train", lambda *a, **kw: calls.append(1) or real_train(*a, **kw))
    paths = buffer(mr_small, frozen, cfg, progress=False)
    assert len(calls) == 4 and all(p.exists() for p in paths)  # experts 1 and 2 only


def test_experts_train_without_dropout_like_the_students(mr_small, frozen, tmp_path, monkeypatch):
    """TextCNN's p=0.5 dropout would make the expert steps ones the dropout-free students cannot follow."""
    assert mtt_module.expert_recipe(MTTConfig(), 100).dropout is False
    recipes = []
    real_train = mtt_module.train
    monkeypatch.setattr(mtt_module, "train", lambda *a, **kw: recipes.append(a[4]) or real_train(*a, **kw))
    cfg = MTTConfig(experts=1, expert_epochs=2, max_start_epoch=1, match_epochs=1, buffer_dir=str(tmp_path))
    buffer(mr_small, frozen, cfg, progress=False)
    assert len(recipes) == 2 and not any(r.dropout for r in recipes)


def test_classifier_only_matches_the_head(mr_small):
    learner = get_learner("textcnn-glove")
    model = learner.build(2, 0)
    assert learner.head_parameter_names(model) == ["head.weight", "head.bias"]
    ds = get_method("dc", outer_loops=1, inner_loops=2, classifier_only=True, labels="soft", length=8).distill(
        mr_small, 1, learner)
    assert ds.labels.shape == (2, 2) and ds.kind == "token-embeddings"


def test_classifier_only_changes_the_matched_gradients(mr_small, monkeypatch):
    from textdistill.methods.dc import DC

    seen, real = [], DC.matching_loss

    def spy(self, learner, model, params, names, *rest):
        seen.append(list(names))
        return real(self, learner, model, params, names, *rest)

    monkeypatch.setattr(DC, "matching_loss", spy)
    learner = get_learner("textcnn-glove")
    for head_only in (True, False):
        get_method("dc", outer_loops=1, inner_loops=1, classifier_only=head_only, length=8).distill(mr_small, 1, learner)
    head, every = seen
    assert head == ["head.weight", "head.bias"]
    assert set(head) < set(every) and any(not n.startswith("head.") for n in every)


def test_embed_reads_what_the_head_reads(mr_small):
    learner = get_learner("minilm")
    model = learner.build(2, 0).eval()
    inputs = learner.encode(["a fine film", "dull"])
    params = dict(model.named_parameters())
    emb = learner.embed(model, params, inputs)
    assert emb.shape == (2, model.config.hidden_size)
    torch.testing.assert_close(model.classifier(emb), learner.forward(model, params, inputs))


def test_dm_loss_is_zero_on_the_real_data_through_a_non_identity_embedding(mr_small):
    """The probe's representation is its input; TextCNN's is a convolution of GloVe tokens: zero still."""
    learner = get_learner("textcnn-glove")
    syn = SyntheticSet(mr_small, 12, learner, np.random.default_rng(0), length=64)
    real, _, per_class = real_inputs(mr_small, learner)
    model = learner.build(2, seed=0).eval()
    for c, rows in enumerate(per_class):
        params = fresh_parameters(model)
        order = syn.rows_of(c)
        real_emb = learner.embed(model, params, {k: v[rows] for k, v in real.items()})
        syn_emb = learner.embed(model, params, syn.inputs(order))
        assert syn_emb.shape[-1] != syn.inputs(order)["inputs_embeds"].shape[-1]  # not the identity
        assert distribution_distance(syn_emb, real_emb, "mean").item() == pytest.approx(0, abs=1e-6)
        assert distribution_distance(syn_emb[:-1], real_emb, "mean").item() > 1e-6


def test_dm_refuses_learned_labels():
    from textdistill.errors import ConfigError

    with pytest.raises(ConfigError, match="does not learn labels"):
        get_method("dm", labels="unrestricted")


def test_pair_task_through_dc_keeps_token_types_and_decodes_to_pairs(tmp_path):
    """A CSV pair task through dc on minilm: the set keeps the pair's token types and decodes to pairs."""
    from textdistill.data import get_task
    from textdistill.decode import decode_to_text

    f = tmp_path / "pairs.csv"
    f.write_text("text,other,label\n" + "".join(f"first sentence {i},second part {i},{'ab'[i % 2]}\n" for i in range(12)))
    task = get_task(str(f), pair_col="other", test_size=0.25, seed=0)
    ds = get_method("dc", outer_loops=1, inner_loops=1, length=12, real_batch=4).distill(task, 1, get_learner("minilm"))
    types = ds.tensors["token_type_ids"]
    assert types.shape == ds.tensors["attention_mask"].shape and (types == 1).any(dim=1).all()
    text = decode_to_text(ds)
    assert len(text.text_pairs) == len(text.texts) == 2
    assert all("second" in t for t in text.text_pairs) and all("second" not in t for t in text.texts)
