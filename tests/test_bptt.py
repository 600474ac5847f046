"""bptt and attention-labels: the hypergradient, truncation, reload, binding and decoding."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from textdistill.decode import decode_to_text
from textdistill.errors import ArtifactError, ConfigError
from textdistill.evaluation import evaluate
from textdistill.learners import Learner, get_learner
from textdistill.methods import get_method
from textdistill.losses import AttentionLabelLoss
from textdistill.methods.unroll import real_loss, unroll
from textdistill.distilled import DistilledDataset
from textdistill.train import Recipe, train


class TinyLearner(Learner):
    """Masked mean of 3-d embeddings -> tanh layer -> 2 logits, in float64."""

    name = "tiny"

    @property
    def default_recipe(self):
        return Recipe()

    def build(self, num_labels, seed):
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, num_labels)).double()

    def encode(self, texts, pairs=None):
        raise NotImplementedError

    def forward(self, model, params, inputs):
        mask = inputs["attention_mask"].unsqueeze(-1).to(inputs["inputs_embeds"].dtype)
        pooled = (inputs["inputs_embeds"] * mask).sum(1) / mask.sum(1)
        return functional_call(model, params, (pooled,))

    def _sentence_vectors(self, texts, pairs):
        raise NotImplementedError


def hyper_loss(x, label_logits, raw_lrs, truncate=0):
    learner = TinyLearner()
    model = learner.build(2, seed=0)
    mask = torch.ones(x.shape[:2], dtype=torch.long)
    params = unroll(learner, model, {"inputs_embeds": x, "attention_mask": mask}, label_logits.softmax(-1),
                    F.softplus(raw_lrs), truncate, seed=0)
    g = torch.Generator().manual_seed(1)
    real = {"inputs_embeds": torch.randn(6, 2, 3, generator=g, dtype=torch.float64),
            "attention_mask": torch.ones(6, 2, dtype=torch.long)}
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    return F.cross_entropy(learner.forward(model, params, real), y)


def test_hypergradient_gradcheck_through_two_unrolled_steps():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.randn(4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    raw = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(hyper_loss, (x, z, raw), eps=1e-6, atol=1e-5)


def test_truncation_cuts_the_early_steps():
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    z = torch.zeros(4, 2, dtype=torch.float64, requires_grad=True)
    raw = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    hyper_loss(x, z, raw, truncate=1).backward()
    assert raw.grad[0] == 0 and raw.grad[1] != 0


def test_chunked_real_loss_equals_one_pass():
    learner = TinyLearner()
    model = learner.build(2, 0)
    params = dict(model.named_parameters())
    inputs = {"inputs_embeds": torch.randn(10, 2, 3, dtype=torch.float64),
              "attention_mask": torch.ones(10, 2, dtype=torch.long)}
    y = torch.randint(0, 2, (10,))
    whole = real_loss(learner, model, params, inputs, y, chunk=10, backward=True)
    grads = [p.grad.clone() for p in params.values()]
    model.zero_grad()
    chunked = real_loss(learner, model, params, inputs, y, chunk=3, backward=True)
    assert abs(whole - chunked) < 1e-12
    for g, p in zip(grads, params.values()):
        torch.testing.assert_close(g, p.grad)


@pytest.fixture(scope="module")
def bptt_set(mr_small):
    return get_method("bptt", outer_steps=3, inner_steps=2, length=8, real_batch=16, labels="soft").distill(
        mr_small, 2, get_learner("textcnn-glove"), seed=0)


def test_bptt_set_reloads_and_trains_the_same(bptt_set, mr_small, tmp_path):
    assert bptt_set.kind == "token-embeddings" and bptt_set.labels.dtype == torch.float32
    assert bptt_set.recipe["optimizer"] == "sgd" and len(bptt_set.lrs) == 2
    bptt_set.save(tmp_path / "b")
    back = DistilledDataset.load(tmp_path / "b")
    torch.testing.assert_close(back.lrs, bptt_set.lrs)
    kw = dict(learners=["textcnn-glove"], seeds=2, cache=False, progress=False)
    a, b = evaluate(mr_small, bptt_set, **kw)[0], evaluate(mr_small, back, **kw)[0]
    assert a.runs == [dict(r, seconds=x["seconds"]) for r, x in zip(b.runs, a.runs)]
    assert a.recipe["lr"] == pytest.approx(float(bptt_set.lrs.mean()))
    with pytest.raises(ArtifactError, match="bound to learner 'textcnn-glove'"):
        evaluate(mr_small, back, ["bilstm-glove"], seeds=1, cache=False, progress=False)


def test_decode_gives_a_text_set_any_learner_trains(bptt_set, mr_small, check_accuracy):
    text = decode_to_text(bptt_set)
    assert text.kind == "text" and len(text.texts) == 4 and all(isinstance(t, str) and t for t in text.texts)
    (r,) = evaluate(mr_small, text, ["minilm-frozen"], seeds=1, cache=False, progress=False)
    check_accuracy(mr_small, text, r)


def test_attention_labels_on_minilm(mr_small):
    ds = get_method("attention-labels", outer_steps=1, inner_steps=1, length=8, real_batch=8).distill(
        mr_small, 1, get_learner("minilm"), seed=0)
    assert ds.attention_labels.shape == (2, 6, 12, 8)  # examples, layers, heads, CLS-row positions
    torch.testing.assert_close(ds.attention_labels.sum(-1), torch.ones(2, 6, 12))
    assert ds.recipe["loss"] == "attention-kl" and ds.recipe["loss_options"] == {"weight": 1.0}


def test_learner_checks():
    with pytest.raises(ConfigError, match="needs a learner with token embeddings"):
        get_method("bptt").check_learner(get_learner("minilm-frozen"))
    with pytest.raises(ConfigError, match="needs a learner that returns its attention"):
        get_method("attention-labels").check_learner(get_learner("textcnn-glove"))
    with pytest.raises(ConfigError, match="labels must be"):
        get_method("bptt", labels="fuzzy")


def test_attention_labels_all_rows_train_on_padded_batches(mr_small):
    """Stored labels cover the full padded length; train() trims each batch, rows and keys (was: size 8 vs 5)."""
    learner = get_learner("minilm")
    texts, _, labels = mr_small.columns("train")
    inputs = learner.encode(texts[:4])
    inputs = {k: F.pad(v, (0, 8)) for k, v in inputs.items()}  # padding beyond every text
    n, length = inputs["input_ids"].shape
    target = torch.full((n, 6, 12, length, length), 1.0 / length)
    params = train(learner, learner.build(2, seed=0), inputs, torch.tensor(labels[:4]), Recipe(steps=1),
                   seed=0, loss=AttentionLabelLoss(target, 1.0))
    assert all(torch.isfinite(p).all() for p in params.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: on the CPU every tensor is already there")
def test_attention_labels_on_cuda(mr_small):
    """Distillation builds its extra model on the device; train() moves CPU attention labels and step sizes there."""
    ds = get_method("attention-labels", outer_steps=1, inner_steps=1, length=8, real_batch=8).distill(
        mr_small, 1, get_learner("minilm"), seed=0, device="cuda")
    learner = get_learner("minilm")
    texts, _, labels = mr_small.columns("train")
    inputs = {k: v[:, :8].cuda() for k, v in learner.encode(texts[:2]).items()}  # the labels cover 8 positions
    params = train(learner, learner.build(2, seed=0), inputs, torch.tensor(labels[:2]), Recipe(steps=1), seed=0,
                   lrs=torch.tensor([1e-4]), loss=AttentionLabelLoss(ds.attention_labels, 1.0))
    assert all(p.is_cuda for p in params.values())


def test_pair_task_keeps_token_types_and_decodes_to_pairs(tmp_path):
    """Token-embedding sets of pair tasks keep the learner's token types (saved, and read in training), and
    decode to text and text_pair."""
    from textdistill.data import get_task

    f = tmp_path / "pairs.csv"
    f.write_text("text,other,label\n" + "".join(f"first sentence {i},second part {i},{'ab'[i % 2]}\n" for i in range(12)))
    task = get_task(str(f), pair_col="other", test_size=0.25, seed=0)
    ds = get_method("bptt", outer_steps=1, inner_steps=1, length=12, real_batch=4).distill(
        task, 1, get_learner("minilm"), seed=0)
    types = ds.tensors["token_type_ids"]
    assert types.shape == ds.tensors["attention_mask"].shape and (types == 1).any(dim=1).all()
    ds.save(tmp_path / "set")
    back = DistilledDataset.load(tmp_path / "set")
    assert torch.equal(back.tensors["token_type_ids"], types)
    assert "token_type_ids" in back.inputs_for(get_learner("minilm"))
    text = decode_to_text(back)
    assert len(text.text_pairs) == len(text.texts) == 2
    assert all("first" in t and "second" not in t for t in text.texts)  # one step of bptt barely moves the set
    assert all("second" in t and "first" not in t for t in text.text_pairs)


def test_attention_labels_start_from_the_attention_on_the_pairs_token_types(tmp_path):
    """The initial attention labels are the pretrained model's attention on the initial set as it is trained:
    with its token types (pair tasks)."""
    from textdistill.data import get_task
    from textdistill.methods.learned_set import SyntheticSet

    f = tmp_path / "pairs.csv"
    f.write_text("text,other,label\n" + "".join(f"first sentence {i},second part {i},{'ab'[i % 2]}\n" for i in range(12)))
    task = get_task(str(f), pair_col="other", test_size=0.25, seed=0)
    method, learner = get_method("attention-labels", attention_rows="all", length=12), get_learner("minilm")
    syn, _ = SyntheticSet.seeded(task, 1, learner, method.config, seed=0)
    inputs = syn.inputs(detach=True)
    assert (inputs["token_type_ids"] == 1).any()
    start = method.extra_parameters(learner, task, inputs)["attention_logits"].exp()
    model = learner.build(task.num_classes, seed=0).eval()
    with torch.no_grad():
        _, with_types = learner.forward(model, dict(model.named_parameters()), inputs, attentions=True)
        no_types = {k: v for k, v in inputs.items() if k != "token_type_ids"}
        _, without = learner.forward(model, dict(model.named_parameters()), no_types, attentions=True)
    assert torch.allclose(start, torch.stack(with_types, 1).clamp_min(1e-6), atol=1e-6)
    assert not torch.allclose(start, torch.stack(without, 1).clamp_min(1e-6), atol=1e-4)
