import pytest
import torch

from textdistill.learners import get_learner, list_learners


@pytest.mark.parametrize("name", ["minilm", "minilm-frozen", "textcnn-glove", "bilstm-glove", "smollm2-135m"])
def test_learner_forward_and_seeded_build(name):
    learner = get_learner(name)
    inputs = learner.encode(["a good film", "a dull , overlong film"], None)
    a, b = learner.build(3, seed=0), learner.build(3, seed=0)
    params = dict(a.named_parameters()) | dict(a.named_buffers())
    logits = learner.forward(a.eval(), params, inputs)
    assert logits.shape == (2, 3)
    torch.testing.assert_close(logits, learner.forward(b.eval(), dict(b.named_parameters()) | dict(b.named_buffers()),
                                                       inputs))


def test_transformer_inputs_embeds_and_attentions():
    learner = get_learner("minilm")
    model = learner.build(2, 0).eval()
    params = dict(model.named_parameters())
    inputs = learner.encode(["a good film"], None)
    embeds = learner.input_embeddings(model, params, inputs["input_ids"])
    by_ids = learner.forward(model, params, inputs)
    logits, attentions = learner.forward(model, params, {"inputs_embeds": embeds,
                                                         "attention_mask": inputs["attention_mask"]}, attentions=True)
    torch.testing.assert_close(by_ids, logits)
    assert len(attentions) == 6 and attentions[0].shape[1] == 12


def test_pairs_and_registry():
    learner = get_learner("minilm")
    enc = learner.encode(["first sentence"], ["second one"])
    assert enc["token_type_ids"].max() == 1
    assert {"minilm", "minilm-frozen", "textcnn-glove", "bilstm-glove"} <= set(list_learners())
    assert list_learners("*glove") == ["textcnn-glove", "bilstm-glove"]


def test_decoder_head_reads_the_last_real_token_and_lora_trains_adapters_and_head():
    from textdistill.train import Recipe, train

    learner = get_learner("smollm2-135m")
    model = learner.build(2, seed=1).eval()
    params = dict(model.named_parameters())
    texts = ["a good film", "a dull , overlong and tiresome film"]
    padded = learner.forward(model, params, learner.encode(texts))  # the first row is right-padded
    alone = torch.cat([learner.forward(model, params, learner.encode([t])) for t in texts])
    torch.testing.assert_close(padded, alone, atol=1e-4, rtol=1e-4)
    assert not torch.equal(learner.build(2, seed=2).score.weight, model.score.weight)
    assert learner.encode(["first"], ["second"])["input_ids"].tolist() == learner.encode(["first\nsecond"])["input_ids"].tolist()

    lora = get_learner("smollm2-135m-lora")
    model = lora.build(2, seed=0)
    trainable = {k for k, v in model.named_parameters() if v.requires_grad}
    assert trainable and all("lora_" in k or k.endswith("score.weight") for k in trainable)
    assert any(k.endswith("score.weight") for k in trainable)
    after = train(lora, model, lora.encode(texts), torch.tensor([1, 0]), Recipe(steps=2, lr=1e-2), seed=0)
    before = dict(model.named_parameters())
    changed = {k for k in trainable if not torch.equal(after[k], before[k])}
    assert any("lora_B" in k for k in changed) and any(k.endswith("score.weight") for k in changed)


def test_learners_read_the_tasks_max_length(mr_small, monkeypatch):
    """A task whose spec says 8 tokens: distill and evaluate cut its texts at 8, the registered learner stays at 64
    and the fitted copy shares its loaded model."""
    from dataclasses import replace

    import textdistill as td
    from textdistill.data import Task
    from textdistill.learners.transformer import TransformerLearner

    task = Task(replace(mr_small.spec, max_length=8), mr_small.data, mr_small.origin)
    base, texts = get_learner("minilm"), task.columns("train")[0][:4]
    fitted = base.for_task(task)
    assert (base.max_length, fitted.max_length) == (64, 8) and fitted._templates is base._templates
    assert fitted.encode(texts)["input_ids"].shape[1] == 8 < base.encode(texts)["input_ids"].shape[1]
    assert get_learner("minilm", max_length=8).max_length == 8 and get_learner("minilm").max_length == 64
    frozen = get_learner("minilm-frozen").for_task(task)
    assert frozen.encoder.max_length == 8 and frozen.describe()["max_length"] == 8
    long = Task(replace(mr_small.spec, max_length=128), mr_small.data, mr_small.origin)  # news-length tasks
    article = [" ".join(texts) * 3]
    assert base.for_task(long).encode(article)["input_ids"].shape[1] == 128 > base.encode(article)["input_ids"].shape[1]
    assert not torch.allclose(torch.from_numpy(frozen.sentence_vectors(texts, cache=False)),
                              torch.from_numpy(get_learner("minilm-frozen").sentence_vectors(texts, cache=False)))

    ds = td.distill(task, "attention-labels", dpc=1, learner="minilm", outer_steps=1, inner_steps=1, real_batch=4)
    # the set's length is the method's option (32); its real starting sentences are cut at the task's 8 tokens
    assert ds.bound_to["max_length"] == 8 == ds.made_with["max_length"] and int(ds.tensors["attention_mask"].sum(1).max()) == 8
    seen = []
    encode = TransformerLearner.encode
    monkeypatch.setattr(TransformerLearner, "encode", lambda self, *a: seen.append(self.max_length) or encode(self, *a))
    td.evaluate(task, td.distill(task, "random", dpc=1, learner="minilm-frozen"), learners=["minilm"], seeds=1,
                recipe={"steps": 1})
    assert seen and set(seen) == {8}
    with pytest.raises(Exception, match="max_length"):
        base.with_max_length(0)


def test_packed_bert_forward_is_the_padded_one_with_the_same_dropout_draws(mr_small):
    """The packed forward (real tokens only) against Hugging Face's padded forward under SDPA: the same logits in
    eval mode, the same logits in training mode from the same seed (so the same dropout masks), for token ids,
    sentence pairs and input embeddings; close gradients."""
    from torch.func import functional_call

    from textdistill.learners.packed import packable

    learner = get_learner("minilm")
    texts, _, _ = mr_small.columns("train")
    model = learner.build(2, seed=0)
    params = dict(model.named_parameters()) | dict(model.named_buffers())
    singles = learner.encode(texts[:6])
    pairs = learner.encode(texts[:4], texts[4:8])
    embeds = {"inputs_embeds": learner.input_embeddings(model, params, singles["input_ids"]),
              "attention_mask": singles["attention_mask"]}
    for inputs in (singles, pairs, embeds):
        assert packable(model, inputs)
        for training in (False, True):
            model.train(training)
            with learner.first_order(model):
                torch.manual_seed(1)
                padded = functional_call(model, params, args=(), kwargs=inputs).logits
                torch.manual_seed(1)
                packed = learner.forward(model, params, inputs)
            torch.testing.assert_close(packed, padded, rtol=0, atol=1e-6)
    weight = params["bert.encoder.layer.0.output.dense.weight"]
    grads = []
    for pack in (False, True):
        with learner.first_order(model):
            torch.manual_seed(1)
            logits = (learner.forward(model, params, singles) if pack
                      else functional_call(model, params, args=(), kwargs=singles).logits)
        grads.append(torch.autograd.grad(logits.square().sum(), weight)[0])
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)
    left = {k: v.flip(1) for k, v in singles.items()}  # left padding: the pooler's first token may be padding
    assert not packable(model, left) and not packable(model, learner.encode(["same length", "same length"]))


def test_a_bilstm_sentence_reads_the_same_whatever_it_is_batched_with():
    """The backward LSTM starts at a sentence's last real token, not at the padding that a longer neighbour adds:
    its logits alone equal its logits beside a sentence five times longer (eval mode: no dropout), and so do its
    gradients, which the learned methods differentiate."""
    learner = get_learner("bilstm-glove")
    model = learner.build(2, seed=0).eval()
    params = dict(model.named_parameters()) | dict(model.named_buffers())
    short = "a warm , funny film"
    alone = learner.forward(model, params, learner.encode([short]))
    batch = learner.encode(["the plot wanders for two hours through scenes that go nowhere , and " * 2, short])
    assert batch["attention_mask"][1].sum() * 5 < batch["attention_mask"].shape[1]  # mostly padding
    beside = learner.forward(model, params, batch)
    torch.testing.assert_close(beside[1:], alone, rtol=1e-5, atol=1e-6)
    # the same through inputs_embeds, as the token-space methods feed it, with the gradient to the embeddings
    embeds = learner.input_embeddings(model, params, batch["input_ids"]).requires_grad_(True)
    logits = learner.forward(model, params, {"inputs_embeds": embeds, "attention_mask": batch["attention_mask"]})
    torch.testing.assert_close(logits, beside)
    (grad,) = torch.autograd.grad(logits[1].sum(), embeds)
    assert grad[1, batch["attention_mask"][1].sum():].abs().max() == 0  # padding does not reach the logits


@pytest.fixture(scope="module")
def tiny_mpnet(tmp_path_factory):
    """A randomly initialised two-layer MPNet (all-mpnet-base-v2's architecture) with MiniLM's tokenizer."""
    from transformers import AutoTokenizer, MPNetConfig, MPNetModel

    from textdistill.resources import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm"))
    torch.manual_seed(0)
    config = MPNetConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, pad_token_id=tokenizer.pad_token_id)
    path = tmp_path_factory.mktemp("tiny-mpnet")
    MPNetModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_mpnet_is_not_packed_and_stays_eager_under_first_order(tiny_mpnet, mr_small):
    """MPNet is not BERT: no packed forward, and no SDPA to switch to, so first_order leaves its eager attention
    (the same logits) and evaluation's loop trains it; token ids and their embeddings give the same logits."""
    from textdistill.learners.packed import packable
    from textdistill.learners.transformer import TransformerLearner
    from textdistill.train import Recipe, predict, train

    learner = TransformerLearner(tiny_mpnet)
    model = learner.build(2, seed=0)
    assert type(model).__name__ == "MPNetForSequenceClassification"
    texts, _, labels = mr_small.columns("train")
    inputs = learner.encode(texts[:6])
    assert not packable(model, inputs) and bool((inputs["attention_mask"] == 0).any())
    params = dict(model.named_parameters()) | dict(model.named_buffers())
    model.eval()
    outside, attentions = learner.forward(model, params, inputs, attentions=True)
    with learner.first_order(model):  # eager-only: it stays eager, and still returns attention probabilities
        inside = learner.forward(model, params, inputs)
        assert learner.forward(model, params, inputs, attentions=True)[1][0] is not None
    torch.testing.assert_close(inside, outside, rtol=0, atol=0)
    assert len(attentions) == 2 and attentions[0].shape[:2] == (6, 2)
    embeds = learner.input_embeddings(model, params, inputs["input_ids"])
    by_embeds = learner.forward(model, params, {"inputs_embeds": embeds, "attention_mask": inputs["attention_mask"]})
    torch.testing.assert_close(by_embeds, outside)
    assert learner.embed(model, params, inputs).shape == (6, 16)  # the head reads the first token
    trained = train(learner, model, inputs, torch.tensor(labels[:6]), Recipe(steps=2, lr=1e-3), seed=0)
    assert predict(learner, model, trained, inputs).shape == (6,)


@pytest.mark.slow
def test_mpnet_learners_on_the_real_weights():
    """all-mpnet-base-v2 (when it is in the cache): a 768-d encoder, and mpnet-frozen's vectors are the
    sentence-transformers model's own (mean pooling, normalised)."""
    from textdistill.resources import mpnet_cached, resolve_model

    if not mpnet_cached():
        pytest.skip("all-mpnet-base-v2 is not in the cache (the first use downloads 404 MB)")
    from sentence_transformers import SentenceTransformer

    learner = get_learner("mpnet")
    assert learner.input_width() == 768 and learner.describe()["revision"].endswith(")")
    model = learner.build(3, seed=0).eval()
    logits = learner.forward(model, dict(model.named_parameters()), learner.encode(["a good film", "a dull one"]))
    assert logits.shape == (2, 3)
    texts = ["a good film", "a dull , overlong film that never ends"]
    frozen = get_learner("mpnet-frozen", max_length=384)
    own = SentenceTransformer(resolve_model("mpnet"), device="cpu").encode(texts)
    torch.testing.assert_close(torch.from_numpy(frozen.sentence_vectors(texts, cache=False)), torch.from_numpy(own),
                               atol=1e-5, rtol=1e-4)
