"""The privacy audit: copying, distances and the membership attack find what they should, and no more."""

import numpy as np
import pytest

from textdistill.audit import audit, max_word_overlap, ngram_overlap, roc
from textdistill.data import get_task
from textdistill.methods import get_method
from textdistill.learners import get_learner


def test_overlap_measures_on_known_texts():
    corpus = ["the cat sat on the mat", "a dog ran far away today"]
    assert max_word_overlap(["the cat sat", "dog ran to the mat", "nothing here"], corpus).tolist() == \
        pytest.approx([1.0, 0.4, 0.0])  # one document at a time: 2 of 5 words in either
    assert ngram_overlap(["the cat sat on", "cat sat on the mat now", "too short"], corpus).tolist()[:2] == \
        pytest.approx([1.0, 2 / 3])
    assert np.isnan(ngram_overlap(["too short"], corpus)[0])


def test_membership_attack_auc_is_one_on_copied_members_and_a_half_on_chance():
    rng = np.random.default_rng(0)
    perfect = roc(np.ones(50), rng.uniform(0, 0.9, 50))
    assert perfect["auc"] == 1.0 and perfect["tpr_at_1%_fpr"] == 1.0
    chance = roc(rng.normal(size=400), rng.normal(size=400))
    assert abs(chance["auc"] - 0.5) < 0.06 and chance["auc_95"][0] < 0.5 < chance["auc_95"][1]


@pytest.fixture(scope="module")
def validation_task(tmp_path_factory):
    """A small task whose test split is carved from train (``NAME:validation``): true non-members."""
    texts, _, labels = get_task("mr").subset(train_per_class=60, test_size=10, seed=0).columns("train")
    path = tmp_path_factory.mktemp("audit") / "small.csv"
    import csv

    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(zip(texts, labels))
    return get_task(f"{path}:validation")


def test_audit_of_a_coreset_finds_every_copy_and_its_members(validation_task):
    ds = get_method("random").distill(validation_task, 5, get_learner("minilm-frozen"), seed=0)
    report = audit(ds, validation_task, sample=100)
    assert report["copying"]["exact_copies"] == len(ds) == 10
    assert report["copying"]["max_word_overlap_train"] == 1.0 > report["copying"]["max_word_overlap_test"]
    assert report["nearest"]["set_to_train_cosine"] == pytest.approx(1.0, abs=1e-5)
    d = report["membership"]["distance"]
    assert d["members"] == d["non_members"] == len(validation_task.test)
    assert "10 of 10 examples are verbatim" in report["verdict"] and "loss attack AUC" in report["verdict"]
    loss = report["membership"]["loss"]
    assert loss["learner"] == "minilm-frozen" and loss["members"] == len(validation_task.test)
    # the attack on those very members: each is in the set, so the distance attack separates them perfectly
    from textdistill.audit import _cosine_max

    enc = get_learner("minilm-frozen")
    own = enc.sentence_vectors(ds.texts)
    held_out = enc.sentence_vectors(validation_task.columns("test")[0])
    assert roc(_cosine_max(own, own), _cosine_max(held_out, own))["auc"] == 1.0


def test_audit_of_a_full_task_set_skips_membership(validation_task):
    task = get_task("mr").subset(train_per_class=20, test_size=20, seed=0)
    ds = get_method("kmeans", n_init=2).distill(task, 2, get_learner("minilm-frozen"), seed=0)
    report = audit(ds, task)
    assert report["membership"] is None and f"distil on {task.name.split(':')[0]}:validation" in report["verdict"]
    # the tokens beside the examples, as MiniLM's tokenizer cuts them at the task's max length
    tokenizer = get_learner("minilm").tokenizer
    hand = sum(len(tokenizer(t, truncation=True, max_length=task.spec.max_length)["input_ids"]) for t in ds.texts)
    assert report["set"]["tokens"] == hand and report["set"]["tokens_learner"] == "minilm"


def test_loss_attack_scores_are_minus_the_losses_of_learners_trained_on_the_set(validation_task):
    """Recomputed by hand for one learner seed, and set members score above the held-out examples."""
    import torch

    from textdistill.audit import loss_scores
    from textdistill.evaluation import resolve_recipe
    from textdistill.seeds import EVAL_SEEDS
    from textdistill.train import predict_logits, train

    ds = get_method("random").distill(validation_task, 5, get_learner("minilm-frozen"), seed=0)
    texts, _, labels = validation_task.columns("train")
    own = [texts.index(t) for t in ds.texts]
    held_t, _, held_y = validation_task.columns("test")
    scores = loss_scores(ds, validation_task, "minilm-frozen", 1, [texts[i] for i in own] + held_t[:10], None,
                         [labels[i] for i in own] + held_y[:10])
    learner = get_learner("minilm-frozen")
    model = learner.build(2, EVAL_SEEDS)
    params = train(learner, model, ds.inputs_for(learner), ds.labels, resolve_recipe(learner, ds, None),
                   seed=EVAL_SEEDS, progress=False)
    logits = predict_logits(learner, model, params, learner.encode(held_t[:10]))
    expected = -torch.nn.functional.cross_entropy(logits, torch.tensor(held_y[:10]), reduction="none")
    np.testing.assert_allclose(scores[10:], expected.numpy(), rtol=1e-5, atol=1e-6)
    assert scores[:10].mean() > scores[10:].mean()  # the set's own examples are fitted


def test_audit_runs_on_every_kind_of_set_or_says_why_not():
    """Text and decoded token sets are read as text, vector sets by their vectors in the space they live in; a
    generator holds no examples and a vector set audited in another space would compare unlike vectors."""
    import torch

    from textdistill.distilled import DistilledDataset
    from textdistill.errors import ArtifactError, ConfigError

    task = get_task("mr").subset(train_per_class=20, test_size=20, seed=0)
    vectors = get_method("dm", iterations=3).distill(task, 1, get_learner("minilm-frozen"), seed=0)
    report = audit(vectors, task)
    assert report["copying"] is None and 0 < report["nearest"]["set_to_train_cosine"] <= 1
    tokens = get_method("dc", outer_loops=1, inner_loops=1, length=6, real_batch=4).distill(
        task, 1, get_learner("textcnn-glove"), seed=0)
    assert audit(tokens, task)["copying"]["exact_copies"] == 0  # decoded nearest tokens: read as text
    with pytest.raises(ConfigError, match="--learner minilm-frozen"):
        audit(vectors, task, learner="textcnn-glove")
    generator = DistilledDataset(kind="generator", labels=torch.zeros(0, dtype=torch.long), label_names=["a", "b"])
    with pytest.raises(ArtifactError, match="holds a model"):
        audit(generator, task)
