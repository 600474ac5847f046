"""learned-labels (labels learned through unrolled training) and teacher labels for text sets."""

import pytest
import torch
import torch.nn.functional as F

from textdistill.data import get_task
from textdistill.learners import FeatureLearner, get_learner
from textdistill.methods import get_method
from textdistill.methods.learned_labels import label_meta_loss, lookahead_gradient, weighted
from textdistill.methods.teacher import teacher_logits
from textdistill.distilled import DistilledDataset
from textdistill.errors import ConfigError
from textdistill.train import Recipe, loss_fn


class TinyFeatures(FeatureLearner):
    """A float64 linear classifier on 4 features: small enough for gradcheck."""

    name = "tiny-features"

    @property
    def default_recipe(self):
        return Recipe()

    def build(self, num_labels, seed):
        torch.manual_seed(seed)
        return torch.nn.Linear(4, num_labels).double()

    def encode(self, texts, pairs=None):
        raise NotImplementedError

    def forward(self, model, params, inputs):
        return torch.func.functional_call(model, params, (inputs["features"],))

    def _sentence_vectors(self, texts, pairs):
        raise NotImplementedError


# SGD at two step sizes (bptt's unroll), and AdamW with warm-up, decay and minibatches (an evaluation recipe)
@pytest.mark.parametrize("schedule", [torch.tensor([0.5, 0.3], dtype=torch.float64),
                                      Recipe(steps=3, lr=0.1, batch_size=3, warmup=0.3, weight_decay=0.1)])
def test_label_hypergradient_passes_gradcheck_through_unrolled_steps(schedule):
    gen = torch.Generator().manual_seed(0)
    learner = TinyFeatures()
    inputs = {"features": torch.randn(4, 4, generator=gen, dtype=torch.float64)}
    real = {"features": torch.randn(12, 4, generator=gen, dtype=torch.float64)}
    real_y = torch.randint(0, 2, (12,), generator=gen)
    logits = torch.randn(4, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    log_weights = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)

    def loss(x, w):  # learned labels, scaled by learned per-text weights
        return label_meta_loss(learner, learner.build(2, 0), inputs, weighted(x.softmax(-1), w), schedule, real,
                               real_y, seed=0)

    assert torch.autograd.gradcheck(loss, (logits, log_weights), eps=1e-6, atol=1e-5)
    # and the gradients are not trivially zero: labels and weights change what the learner learns
    for g in torch.autograd.grad(loss(logits, log_weights), (logits, log_weights)):
        assert g.abs().max() > 1e-4


def test_the_lookahead_gradient_is_the_one_step_hypergradient():
    """inner_recipe online's probe against autograd through one preconditioned step: d L_real(theta - lr * P * g(y))
    / d y, per unit learning rate (the probe reads grad L_real before the step: equal as lr -> 0)."""
    gen = torch.Generator().manual_seed(0)
    learner, lr = TinyFeatures(), 1e-7
    model = learner.build(2, 0)
    params = dict(model.named_parameters())
    inputs = {"features": torch.randn(5, 4, generator=gen, dtype=torch.float64)}
    real = {"features": torch.randn(12, 4, generator=gen, dtype=torch.float64)}
    real_y = torch.randint(0, 2, (12,), generator=gen)
    labels = torch.rand(5, 2, generator=gen, dtype=torch.float64).requires_grad_(True)
    precondition = {k: torch.rand(v.shape, generator=gen, dtype=torch.float64) + 0.5 for k, v in params.items()}
    grads = torch.autograd.grad(loss_fn(learner.forward(model, params, inputs), labels), list(params.values()),
                                create_graph=True)
    stepped = {k: p - lr * precondition[k] * g for (k, p), g in zip(params.items(), grads)}
    after = F.cross_entropy(learner.forward(model, stepped, real), real_y)
    (expected,) = torch.autograd.grad(after, labels)
    got, loss = lookahead_gradient(learner, model, params, inputs, precondition, real, real_y)
    assert torch.allclose(got, expected / lr, rtol=1e-4, atol=1e-6) and expected.abs().max() > 1e-9
    assert loss == pytest.approx(F.cross_entropy(learner.forward(model, params, real), real_y).item())


def test_the_lookahead_probe_is_exact_on_minilm_in_float32(small):
    """The forward-mode probe on fine-tuned MiniLM (float32, eager attention) against float64 central
    differences, with preconditioner entries 1e8 times the others (a fresh AdamW moment gives 1 / eps), where
    the first version's central differences, sized by the largest entry, would move the other parameters by
    about 1e-8 (reasoned from its step rule; that version was not run against this test)."""
    learner = get_learner("minilm").for_task(small)
    texts, _, y = small.columns("train")
    model = learner.build(2, 0)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    inputs, real, real_y = learner.encode(texts[:4]), learner.encode(texts[4:20]), torch.tensor(y[4:20])
    words = model.get_input_embeddings().weight
    precondition = {k: torch.ones_like(v) for k, v in params.items()}
    (name,) = [k for k, v in model.named_parameters() if v is words]
    precondition[name][inputs["input_ids"].unique()] = 1e8  # rows the texts read: large, as fresh AdamW moments give
    got, _ = lookahead_gradient(learner, model, params, inputs, precondition, real, real_y)

    model64 = learner.build(2, 0).double().eval()
    p64 = {k: v.detach().double().requires_grad_(True) for k, v in params.items()}
    loss = F.cross_entropy(learner.forward(model64, p64, real), real_y)
    direction = {k: precondition[k].double() * g for k, g in zip(p64, torch.autograd.grad(loss, list(p64.values())))}
    h = 1e-9
    with torch.no_grad():
        def log_probs(sign):
            return F.log_softmax(learner.forward(model64, {k: v + sign * h * direction[k] for k, v in p64.items()},
                                                 inputs), -1)

        expected = (log_probs(1) - log_probs(-1)) / (2 * h) / 4
    assert torch.allclose(got.double(), expected, rtol=1e-3, atol=1e-6 * float(expected.abs().max()))


@pytest.fixture(scope="module")
def small():
    return get_task("mr").subset(train_per_class=40, test_size=40, seed=0)


# SGD steps; the probe's whole recipe; its recipe back-propagated through the last 100 of its 300 steps only;
# per-text weights on the real labels instead of labels; online look-ahead for labels and for weights (both fail
# with the online hypergradient's sign flipped: the real loss rises, 0.60 to 0.71 and 0.61 to 0.69)
@pytest.mark.parametrize("inner,truncate,learn", [("sgd", 0, "labels"), ("learner", 0, "labels"),
                                                  ("learner", 100, "labels"), ("learner", 0, "weights"),
                                                  ("online", 0, "labels"), ("online", 0, "weights")])
def test_learned_labels_lower_the_real_loss(small, inner, truncate, learn, tmp_path):
    learner = get_learner("minilm-frozen")
    # 4 outer steps of 300 steps suffice for labels; weights move the probe's 300 AdamW steps less (20 smaller)
    weights = learn == "weights"
    options = {"outer_steps": 15 if inner == "sgd" else 20 if weights else 4, "inner_steps": 5, "init_lr": 5.0,
               "real_batch": 80, "outer_lr": 0.1 if weights else 0.2, "inner_recipe": inner, "truncate": truncate,
               "learn": learn, "probe_every": 30}
    ds = get_method("learned-labels", **options).distill(small, 2, learner, seed=0)
    start = get_method("kmeans").distill(small, 2, learner, seed=0)
    assert ds.texts == start.texts  # the texts are the coreset's, untouched
    texts, pairs, labels = small.columns("train")
    real, real_y = learner.encode(texts, pairs), torch.tensor(labels)
    inputs = start.inputs_for(learner)
    # the probe's own 300-step AdamW recipe, unrolled whole, or the SGD step sizes learned beside the labels
    by_recipe = inner in ("learner", "online")
    lrs = learner.default_recipe if by_recipe else torch.tensor(ds.log["step_sizes"])
    assert ("inner_recipes" in ds.log) == by_recipe

    def real_loss(labels):  # same fresh learner, same steps: only the labels differ
        return label_meta_loss(learner, learner.build(2, 123), inputs, labels, lrs, real, real_y, 0).detach().item()

    hard = F.one_hot(start.hard_labels, 2).float()
    before = real_loss(hard if weights else (hard * 3.0).softmax(-1))
    after = real_loss(ds.labels if not weights else ds.labels * ds.label_weights[:, None])  # the same loss
    assert after < before - 1e-3, (before, after)
    if weights:  # the real labels, and beside them each text's weight (positive, mean 1)
        w = ds.label_weights
        assert torch.equal(ds.labels, hard) and torch.allclose(w.mean(), torch.tensor(1.0))
        assert w.min() > 0 and w.std() > 1e-3 and ds.per_example["weights"] is w
        from textdistill.page import write_set_page

        write_set_page(ds, small, tmp_path / "page.html")  # a row shows its distribution and its weight
        i = int((w - 1).abs().argmax())
        shown = "(1.00, 0.00)" if start.hard_labels[i] == 0 else "(0.00, 1.00)"
        assert f"{shown}, weight {float(w[i]):.2f}" in (tmp_path / "page.html").read_text()
        exported = ds.to_dataset()  # a distribution and a weight per row, for frameworks that read them
        assert torch.allclose(torch.tensor(exported["soft_label"]), hard)
        assert exported["weight"] == pytest.approx(w.tolist())


def test_learned_labels_set_is_text_with_float_labels_that_round_trips(small, tmp_path, capsys):
    # two SGD steps: TextCNN's own 300-step recipe unrolled would cost half a minute an outer step
    ds = get_method("learned-labels", outer_steps=2, inner_recipe="sgd", inner_steps=2, real_batch=16,
                    init_learner="minilm-frozen").distill(small, 2, get_learner("textcnn-glove"), seed=0)
    # learned with TextCNN on the texts k-means picks in MiniLM's space: labels of other learners share them
    assert ds.texts == get_method("kmeans").distill(small, 2, get_learner("minilm-frozen"), seed=0).texts
    assert ds.log["learned_with"] == "textcnn-glove" and ds.log["picked_with"] == "minilm-frozen"
    with pytest.raises(Exception, match="unknown learner"):
        get_method("learned-labels", init_learner="no-such-learner")
    with pytest.raises(Exception, match="unknown learner"):
        get_method("learned-labels", inner_recipe="learner", also_learners="minilm-frozen,no-such-learner")
    with pytest.raises(Exception, match=r"truncate \(3\) must be at most inner_steps \(2\)"):
        get_method("learned-labels", inner_recipe="sgd", inner_steps=2, truncate=3)
    with pytest.raises(Exception, match="needs inner_recipe learner"):
        get_method("learned-labels", inner_recipe="sgd", also_learners="minilm-frozen")
    with pytest.raises(Exception, match="learn must be one of labels, weights, both"):
        get_method("learned-labels", learn="texts")
    with pytest.raises(ConfigError, match="truncate does not apply to inner_recipe online"):
        get_method("learned-labels", inner_recipe="online", truncate=4)
    assert ds.kind == "text" and ds.labels.dtype == torch.float32 and ds.labels.shape == (4, 2)
    assert torch.allclose(ds.labels.sum(-1), torch.ones(4))
    ds.save(tmp_path / "set")
    back = DistilledDataset.load(tmp_path / "set")
    assert back.fingerprint() == ds.fingerprint() and torch.equal(back.labels, ds.labels)
    assert "input_ids" in back.inputs_for(get_learner("minilm"))  # text: another learner trains on it
    assert ds.label_weights is None and "weight" not in ds.to_dataset().column_names
    both = get_method("learned-labels", outer_steps=2, inner_recipe="sgd", inner_steps=2, real_batch=16, learn="both",
                      init_learner="minilm-frozen").distill(small, 2, get_learner("textcnn-glove"), seed=0)
    rows = both.labels  # soft distributions, each text's weight beside its row
    assert torch.allclose(rows.sum(-1), torch.ones(4)) and (rows.max(-1).values < 1 - 1e-3).all()
    assert torch.allclose(both.label_weights.mean(), torch.tensor(1.0)) and both.label_weights.shape == (4,)
    assert both.log["learned"] == "both"
    from textdistill.cli import main

    both.save(tmp_path / "both")
    assert main(["show", str(tmp_path / "both")]) == 0  # the weights are shown beside the labels
    out = capsys.readouterr().out
    assert "example weights from" in out and f" x{float(both.label_weights[0]):.2f}] " in out


def test_teacher_labels_are_the_teachers_softmax_at_the_temperature(small):
    learner = get_learner("minilm-frozen")
    hard = get_method("herding").distill(small, 2, learner, seed=0)
    soft = get_method("herding", soft_labels="teacher", teacher="minilm-frozen", temperature=2.0).distill(
        small, 2, learner, seed=0)
    assert soft.texts == hard.texts and soft.kind == "text"
    expected = (teacher_logits(small, "minilm-frozen", hard.texts, None) / 2.0).softmax(-1)
    assert torch.allclose(soft.labels, expected, atol=1e-6)
    assert not torch.allclose(expected, F.one_hot(hard.labels, 2).float(), atol=0.05)  # soft indeed
    assert soft.log["teacher"]["temperature"] == 2.0
    # the teacher is trained once per task content: a set of other texts reuses it
    texts, _, _ = small.columns("train")
    again = teacher_logits(small, "minilm-frozen", texts[:3], None)
    assert torch.allclose(again, teacher_logits(small, "minilm-frozen", texts[:3], None))
    with pytest.raises(Exception, match="soft_labels"):
        get_method("kmeans", soft_labels="maybe")


def test_an_ensemble_teacher_averages_its_members_distributions(small):
    learner = get_learner("minilm-frozen")
    soft = get_method("kmeans", soft_labels="teacher", teacher="minilm-frozen, textcnn-glove", temperature=2.0).distill(
        small, 2, learner, seed=0)
    members = [(teacher_logits(small, name, soft.texts, None) / 2.0).softmax(-1)
               for name in ("minilm-frozen", "textcnn-glove")]
    assert not torch.allclose(members[0], members[1], atol=0.02)  # two views, so the mean is not either one
    assert torch.allclose(soft.labels, (members[0] + members[1]) / 2, atol=1e-6)
    assert soft.log["teacher"]["learner"] == "minilm-frozen,textcnn-glove"  # one spelling, one set key
    assert set(soft.log["teacher"]["members_agree_with_labels"]) == {"minilm-frozen", "textcnn-glove"}
    single = get_method("kmeans", soft_labels="teacher", teacher="minilm-frozen").distill(small, 2, learner, seed=0)
    assert "members_agree_with_labels" not in single.log["teacher"]
    for bad in ("minilm-frozen,", "minilm-frozen, ,textcnn-glove", "minilm-frozen,minilm-frozen"):
        with pytest.raises(ConfigError, match="empty or a repeated"):
            get_method("kmeans", soft_labels="teacher", teacher=bad)
    with pytest.raises(ConfigError, match="unknown learner 'textcnn-glvoe'"):
        get_method("kmeans", soft_labels="teacher", teacher="minilm-frozen,textcnn-glvoe")


def test_a_teacher_in_training_elsewhere_is_waited_for_and_loaded(small, tmp_path, monkeypatch):
    """bench --workers: a second process asking for a teacher that the first is training waits for its lock,
    then loads the cached one instead of training another."""
    import threading

    from filelock import FileLock

    monkeypatch.setenv("TEXTDISTILL_CACHE", str(tmp_path))
    texts = small.columns("train")[0][:3]
    expected = teacher_logits(small, "minilm-frozen", texts, None)
    (path,) = (tmp_path / "teachers").glob("*.safetensors")
    away = path.rename(path.with_suffix(".away"))  # as if the other process had not written it yet

    def no_training(*args, **kwargs):
        raise AssertionError("trained a second teacher")

    monkeypatch.setattr("textdistill.train.train", no_training)
    asking = threading.Event()

    class Watched(FileLock):  # tells when the waiting side has reached the lock
        def acquire(self, *args, **kwargs):
            asking.set()
            return super().acquire(*args, **kwargs)

    monkeypatch.setattr("textdistill.cache.FileLock", Watched)
    got = {}
    with FileLock(str(path) + ".lock"):  # the other process, still training
        waiting = threading.Thread(target=lambda: got.update(logits=teacher_logits(small, "minilm-frozen", texts, None)),
                                   daemon=True)
        waiting.start()
        assert asking.wait(60)
        waiting.join(0.5)
        assert waiting.is_alive() and not got  # blocked on the lock
        away.rename(path)
    waiting.join(60)
    assert not waiting.is_alive() and torch.allclose(got["logits"], expected)


def test_labels_learned_against_two_learners_at_once(small, monkeypatch):
    """also_learners: every outer step trains the probe beside TextCNN on the labels and sums their real
    losses, so the labels differ from those learned with TextCNN alone."""
    for name in ("textcnn-glove", "minilm-frozen"):  # 300 unrolled steps per outer step each: 10 do for the check
        monkeypatch.setattr(type(get_learner(name)), "default_recipe", property(lambda self: Recipe(steps=10, lr=1e-2)))
    options = {"outer_steps": 2, "real_batch": 16, "inner_recipe": "learner", "outer_lr": 0.5}
    alone = get_method("learned-labels", **options).distill(small, 2, get_learner("textcnn-glove"), seed=0)
    both = get_method("learned-labels", also_learners="minilm-frozen", **options).distill(
        small, 2, get_learner("textcnn-glove"), seed=0)
    assert both.log["learned_with"] == "textcnn-glove+minilm-frozen" and both.texts == alone.texts
    assert set(both.log["inner_recipes"]) == {"textcnn-glove", "minilm-frozen"}
    assert not torch.allclose(both.labels, alone.labels, atol=1e-3)


def test_by_default_labels_are_learned_through_the_recipe_evaluation_trains_the_set_with(small, monkeypatch):
    """With no inner_recipe given, every outer step trains the learner (differentiably, from the labels being
    learned) with the very recipe that evaluation resolves for the finished set, not SGD steps that no
    evaluation takes."""
    from textdistill.evaluation import resolve_recipe
    from textdistill.methods import learned_labels as module

    learner = get_learner("minilm-frozen")
    # a short recipe of its own (300 unrolled steps per outer step are not needed to follow it)
    monkeypatch.setattr(type(learner), "default_recipe",
                        property(lambda self: Recipe(steps=6, lr=1e-2, warmup=0.2, schedule="cosine", batch_size=3)))
    seen, real_train = [], module.train

    def spy(learner, model, inputs, labels, recipe, **kwargs):  # what each outer step trains with
        seen.append((recipe.to_dict(), labels.requires_grad, kwargs.get("differentiable")))
        return real_train(learner, model, inputs, labels, recipe, **kwargs)

    monkeypatch.setattr(module, "train", spy)
    ds = get_method("learned-labels", outer_steps=3, real_batch=16).distill(small, 2, learner, seed=0)
    evaluated = resolve_recipe(learner, ds, None).to_dict()
    assert evaluated["steps"] == 6 and evaluated["batch_size"] == 3
    assert seen == [(evaluated, True, True)] * 3
