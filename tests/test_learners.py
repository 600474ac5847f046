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
