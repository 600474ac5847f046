import pytest
import torch

from textdistill.learners import get_learner, list_learners


@pytest.mark.parametrize("name", ["minilm", "minilm-frozen", "textcnn-glove", "bilstm-glove"])
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
