import contextlib

import pytest
import torch
import torch.nn.functional as F

from textdistill.errors import TextDistillError
from textdistill.learners import get_learner
from textdistill.losses import attention_kl
from textdistill.train import Recipe, adamw_init, adamw_step, adamw_step_, loss_fn, predict, train


def tiny_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    x, y = torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)
    return model, x, y


@pytest.mark.parametrize("in_place", [False, True])
def test_functional_step_equals_optimizer_step(in_place):
    model, x, y = tiny_problem()
    recipe = Recipe(lr=0.05, weight_decay=0.1)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    state = adamw_init(params)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=recipe.betas, eps=recipe.eps,
                            weight_decay=recipe.weight_decay)
    for step in range(1, 6):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        grads = {k: v.grad.clone() for k, v in model.named_parameters()}
        opt.step()
        if in_place:
            adamw_step_(params, grads, state, step, recipe.lr, recipe)
        else:
            params, state = adamw_step(params, grads, state, step, recipe.lr, recipe)
        for k, v in model.named_parameters():
            torch.testing.assert_close(params[k], v.detach(), rtol=1e-6, atol=1e-7)


def test_differentiable_step_reaches_learning_rates():
    model, x, y = tiny_problem()
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    lr = torch.tensor(0.1, requires_grad=True)
    grads = dict(zip(params, torch.autograd.grad(loss_fn(model(x), y), list(model.parameters()), create_graph=True)))
    new, _ = adamw_step(params, grads, adamw_init(params), 1, lr, Recipe())
    (g,) = torch.autograd.grad(torch.func.functional_call(model, new, (x,)).sum(), lr)
    assert torch.isfinite(g) and g != 0


def test_a_zero_gradient_entry_leaves_the_step_and_its_gradient_finite():
    params = {"w": torch.tensor([1.0, 2.0], requires_grad=True)}
    grad = torch.tensor([0.0, 0.5], requires_grad=True)  # a feature the batch never uses, say
    new, _ = adamw_step(params, {"w": grad * 1}, adamw_init(params), 1, 0.1, Recipe(weight_decay=0.0))
    torch.testing.assert_close(new["w"].detach(), torch.tensor([1.0, 1.9]))  # no move where g = 0; sign step else
    (d,) = torch.autograd.grad(new["w"].sum(), grad)
    assert torch.isfinite(d).all()  # sqrt's infinite slope at v = 0 once made this nan


def test_soft_labels_equal_hard_for_one_hot():
    logits = torch.randn(6, 3)
    y = torch.tensor([0, 2, 1, 1, 0, 2])
    torch.testing.assert_close(loss_fn(logits, y), loss_fn(logits, torch.nn.functional.one_hot(y, 3).float()))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_any_integer_labels_are_hard(dtype):
    logits = torch.randn(6, 3)
    y = torch.tensor([0, 2, 1, 1, 0, 2])
    torch.testing.assert_close(loss_fn(logits, y.to(dtype)), torch.nn.functional.cross_entropy(logits, y))


def test_training_is_deterministic_and_learns(mr_small):
    learner = get_learner("textcnn-glove")
    texts, _, labels = mr_small.columns("train")
    inputs, y = learner.encode(texts), torch.tensor(labels)
    recipe = Recipe(steps=30, lr=1e-2, warmup=0.1)
    runs = [train(learner, learner.build(2, seed=1), inputs, y, recipe, seed=1) for _ in range(2)]
    for k in runs[0]:
        torch.testing.assert_close(runs[0][k], runs[1][k])
    model = learner.build(2, seed=1)
    before = loss_fn(learner.forward(model.eval(), dict(model.named_parameters()), inputs), y)
    after = loss_fn(learner.forward(model.eval(), runs[0], inputs), y)
    assert after < before


def test_schedule_shapes():
    r = Recipe(steps=10, lr=1.0, warmup=0.5)
    assert [round(r.lr_at(s), 2) for s in (0, 4, 5)] == [0.2, 1.0, 1.0] and r.lr_at(9) < 0.1
    assert Recipe(steps=10, lr=1.0, warmup=0, schedule="linear").lr_at(5) == 0.5


def test_nan_loss_is_a_clear_error():
    learner = get_learner("minilm-frozen")
    model = learner.build(2, 0)
    inputs = {"features": torch.full((4, 384), float("nan"))}
    with pytest.raises(TextDistillError, match="loss became nan at step 0"):
        train(learner, model, inputs, torch.tensor([0, 1, 0, 1]), Recipe(steps=3), seed=0)


def test_bad_recipe():
    with pytest.raises(Exception, match="schedule"):
        Recipe(schedule="step")


def test_predict_in_length_order_and_sdpa_give_the_eager_answers(mr_small):
    learner = get_learner("minilm")
    texts, _, _ = mr_small.columns("test")
    inputs = learner.encode(texts)
    model = learner.build(2, seed=0).eval()
    params = dict(model.named_parameters())
    with torch.no_grad():
        eager = learner.forward(model, params, inputs)  # one batch, in order, eager attention
        with learner.first_order(model):
            torch.testing.assert_close(learner.forward(model, params, inputs), eager, rtol=1e-4, atol=1e-5)
        # eager restored: unrolled methods and attention labels need its attention probabilities
        _, attentions = learner.forward(model, params, inputs, attentions=True)
    assert len(attentions) == model.config.num_hidden_layers and attentions[0] is not None
    assert torch.equal(predict(learner, model, params, inputs, batch_size=16), eager.argmax(-1))


def test_bf16_recipe_trains_and_predicts(mr_small):
    learner = get_learner("minilm-frozen")
    texts, _, labels = mr_small.columns("train")
    inputs, y = learner.encode(texts), torch.tensor(labels)
    model = learner.build(2, seed=0)
    params = train(learner, model, inputs, y, Recipe(steps=20, lr=1e-2, precision="bf16"), seed=0)
    assert (predict(learner, model, params, inputs, precision="bf16") == y).float().mean() > 0.7
    with pytest.raises(Exception, match="precision"):
        Recipe(precision="fp8")


@pytest.mark.parametrize("rows", ["cls", "all"])
def test_attention_kl_equals_kl_div_on_trimmed_batches(rows):
    """Targets are stored at full length (8); a batch trimmed to its longest sequence (5) compares the first 5."""
    g = torch.Generator().manual_seed(0)
    n, layers, heads, full, length = 3, 2, 2, 8, 5
    keep = torch.arange(full) < torch.tensor([5, 3, 4])[:, None]  # padding after each example's length
    shape = (n, layers, heads, full) if rows == "cls" else (n, layers, heads, full, full)
    mask = keep[:, None, None, :] if rows == "cls" else keep[:, None, None, None, :]
    target = torch.randn(shape, generator=g).masked_fill(~mask, -1e4).softmax(-1)
    attentions = tuple(torch.randn(n, heads, length, length, generator=g).softmax(-1) for _ in range(layers))
    model = torch.stack(attentions, 1)
    model, expected_target = ((model[:, :, :, 0], target[..., :length]) if rows == "cls"
                              else (model, target[..., :length, :length]))
    expected = torch.nn.functional.kl_div(model.log(), expected_target, reduction="none").sum(-1).mean()
    torch.testing.assert_close(attention_kl(target, attentions), expected)


class FeatureLearner:
    """A learner over plain features, for train(): a linear layer; the embedding table is never reached."""

    def forward(self, model, params, inputs):
        return torch.func.functional_call(model, params, (inputs["features"],))

    def first_order(self, model):
        return contextlib.nullcontext()


class LinearWithUnusedTable(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.table = torch.nn.Embedding(10, 5)  # like word embeddings under inputs_embeds
        self.head = torch.nn.Linear(5, 3)

    def forward(self, x):
        return self.head(x)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_unrolled_training_leaves_unreached_parameters_alone(optimizer):
    """No per-step zero gradient in the graph: an unreached parameter comes back as the very tensor it started as,
    and the reached ones take the steps they take without a graph (SGD without weight decay: the same maths)."""
    torch.manual_seed(0)
    model, (_, x, y) = LinearWithUnusedTable(), tiny_problem()
    recipe = Recipe(steps=3, lr=0.1, warmup=0.0, weight_decay=0.0, optimizer=optimizer)
    start = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    out = train(FeatureLearner(), model, {"features": x}, y, recipe, seed=0, params=start, differentiable=True)
    assert out["table.weight"] is start["table.weight"]
    plain = train(FeatureLearner(), model, {"features": x}, y, recipe, seed=0)
    for k in ("head.weight", "head.bias"):
        torch.testing.assert_close(out[k].detach(), plain[k])


def test_full_data_recipe_runs_whole_epochs():
    from textdistill.learners import get_learner

    r = get_learner("minilm").full_data_recipe(3000)
    assert (r.steps, r.batch_size, r.lr, r.schedule) == (282, 32, 5e-5, "linear")  # 3 epochs of 94 batches
    assert get_learner("minilm").full_data_recipe(10).batch_size == 32 and get_learner("minilm").full_data_recipe(10).steps == 3


def test_train_puts_the_model_inputs_labels_and_step_sizes_on_its_device(monkeypatch):
    """This machine has one device, so train() is checked by what it asks for: the model, every input, the labels
    and a distilled step-size schedule go to the device it is given (a CUDA run once crashed on a tensor that
    stayed on the CPU)."""
    moved: list[tuple[int, str]] = []
    tensor_to, module_to = torch.Tensor.to, torch.nn.Module.to

    def record(original):
        def to(self, *args, **kwargs):
            moved.append((id(self), str(args[0] if args else kwargs.get("device"))))
            return original(self, *args, **kwargs)
        return to

    monkeypatch.setattr(torch.Tensor, "to", record(tensor_to))
    monkeypatch.setattr(torch.nn.Module, "to", record(module_to))
    model, (_, x, y) = LinearWithUnusedTable(), tiny_problem()
    lrs = torch.full((3,), 0.1)
    train(FeatureLearner(), model, {"features": x}, y, Recipe(steps=3, lr=0.1), seed=0, lrs=lrs, device="cpu")
    assert {id(model), id(x), id(y), id(lrs)} <= {i for i, device in moved if device == "cpu"}


def test_an_optimizer_carried_across_segments_is_one_run():
    """train(optimizer=state) in segments of one schedule takes the steps of one uninterrupted AdamW run (full
    batches, so the batch order does not matter): the moments and the bias correction's step count carry on."""
    model, x, y = tiny_problem()
    recipe = Recipe(steps=6, lr=0.05, warmup=0.5, schedule="cosine", weight_decay=0.1)
    lrs = torch.tensor([recipe.lr_at(s) for s in range(6)])
    whole = train(FeatureLearner(), model, {"features": x}, y, recipe, seed=0, lrs=lrs)
    state, params = {}, None
    for part in (lrs[:2], lrs[2:5], lrs[5:]):
        params = train(FeatureLearner(), model, {"features": x}, y, recipe, seed=1, lrs=part, params=params,
                       optimizer=state)
    assert state["taken"] == 6
    for k in whole:
        torch.testing.assert_close(params[k], whole[k])
    restarted = train(FeatureLearner(), model, {"features": x}, y, recipe, seed=1, lrs=lrs[2:],
                      params=train(FeatureLearner(), model, {"features": x}, y, recipe, seed=1, lrs=lrs[:2]))
    assert not torch.allclose(restarted["0.weight"], whole["0.weight"])  # a fresh AdamW per call is another run
    with pytest.raises(ValueError, match="without a graph"):
        train(FeatureLearner(), model, {"features": x}, y, recipe, seed=0, optimizer={}, differentiable=True)


def test_truncated_unrolling_takes_the_same_steps_and_differentiates_the_last_ones():
    """train(differentiable=True, truncate=k): the run's values are the plain run's (batch order, AdamW moments and
    schedule carry across the switch), and the labels' gradient is the gradient through the last k steps only."""
    model, x, y = tiny_problem()
    soft = (F.one_hot(y, 3) * 0.7 + 0.1).requires_grad_(True)

    def run(recipe, truncate, lrs=None):
        out = train(FeatureLearner(), model, {"features": x}, soft, recipe, seed=0, lrs=lrs, differentiable=True,
                    truncate=truncate)
        (g,) = torch.autograd.grad(loss_fn(torch.func.functional_call(model, out, (x,)), y), soft)
        return out, g

    adamw = Recipe(steps=7, lr=0.05, batch_size=3, warmup=0.3, schedule="cosine", weight_decay=0.1)
    plain = train(FeatureLearner(), model, {"features": x}, soft.detach(), adamw, seed=0)
    _, whole = run(adamw, 0)
    for k in (2, 7, 50):
        out, g = run(adamw, k)
        for name in plain:
            torch.testing.assert_close(out[name].detach(), plain[name])
        if k >= 7:
            torch.testing.assert_close(g, whole)  # every step kept: the whole gradient
        else:
            assert g.abs().max() > 1e-6 and not torch.allclose(g, whole)
    # the reference for k = 2 (full-batch SGD, where two calls are one run): 5 steps without a graph, then 2 with one
    sgd, lrs = Recipe.sgd(7, 0.3, 8), torch.linspace(0.5, 0.1, 7)
    head = train(FeatureLearner(), model, {"features": x}, soft.detach(), sgd, seed=0, lrs=lrs[:5])
    tail = train(FeatureLearner(), model, {"features": x}, soft, sgd, seed=0, lrs=lrs[5:], params=head,
                 differentiable=True)
    (reference,) = torch.autograd.grad(loss_fn(torch.func.functional_call(model, tail, (x,)), y), soft)
    torch.testing.assert_close(run(sgd, 2, lrs)[1], reference)


def test_bf16_training_steps_read_the_current_weights():
    """Under one bf16 autocast around the whole loop, torch caches the bf16 copy of each weight it casts (leaf
    tensors that require grad) until the context exits, while the steps update the float32 weights in place: the
    forwards must see each step's weights, as a loop with autocast around each forward does."""
    model, x, y = tiny_problem()
    recipe = Recipe(steps=5, lr=0.1, batch_size=8, warmup=0.0, weight_decay=0.0, precision="bf16")
    out = train(FeatureLearner(), model, {"features": x}, y, recipe, seed=0)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    state = adamw_init(params)
    for step in range(5):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            value = loss_fn(torch.func.functional_call(model, params, (x,)), y)
        grads = dict(zip(params, torch.autograd.grad(value, list(params.values()))))
        adamw_step_(params, grads, state, step + 1, recipe.lr_at(step), recipe)
    for k in params:
        torch.testing.assert_close(out[k], params[k].detach())
