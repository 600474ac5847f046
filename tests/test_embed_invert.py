"""embed-invert: vectors learned in a sentence space, written back as text."""

import numpy as np
import pytest

from textdistill.data import get_task
from textdistill.errors import ConfigError
from textdistill.learners import get_learner
from textdistill.methods import get_method
from textdistill.methods.embed_invert import search


@pytest.fixture(scope="module")
def small():
    return get_task("mr").subset(train_per_class=30, test_size=20, seed=0)


def test_nearest_writes_distinct_real_sentences_of_the_right_class(small):
    ds = get_method("embed-invert", space_options="iterations=5").distill(small, 3, get_learner("minilm-frozen"), 0)
    texts, _, labels = small.columns("train")
    label_of = dict(zip(texts, labels))
    assert ds.kind == "text" and len(ds) == 6 and len(set(ds.texts)) == 6
    assert all(label_of[t] == y for t, y in zip(ds.texts, ds.hard_labels.tolist()))
    f = ds.provenance.fidelity
    assert f["cosine_to_target"] == f["nearest_real_cosine"] and all(0 < c <= 1 for c in f["cosine_to_target"])
    assert f["probe_label_agreement"] >= 0.5  # real sentences of the class, read by a probe fit on them


def test_search_never_ends_worse_than_its_start():
    rng = np.random.default_rng(0)
    table = {s: rng.normal(size=8) for s in ["start", "a", "b", "c", "d", "e"]}
    target = table["start"] / np.linalg.norm(table["start"]) * 0.5 + rng.normal(size=8) * 0.1
    target /= np.linalg.norm(target)
    embed = lambda ss: np.stack([table[s] for s in ss])  # noqa: E731
    seen = []

    def propose(context, r):
        seen.append(list(context))
        return ["a", "b"] if r == 0 else ["c", "d", "e"]

    best, cos = search(target, "start", ["start", "x1", "x2"], propose, embed, rounds=2)
    unit = {s: float(v @ target / np.linalg.norm(v)) for s, v in table.items()}
    assert cos == pytest.approx(max(unit.values())) and unit[best] == pytest.approx(cos)
    assert cos >= unit["start"]
    assert seen[0][0] == "start" and len(seen) == 2  # the best so far leads the next prompt
    only_worse = search(target, "start", ["start"], lambda c, r: ["a"] if unit["a"] < unit["start"] else [], embed, 1)
    assert only_worse[0] == "start"


def test_embed_invert_refuses_token_learners_and_bad_options():
    with pytest.raises(ConfigError, match="key=value"):
        get_method("embed-invert", space_options="iterations")
    with pytest.raises(ConfigError, match="unknown option"):
        get_method("embed-invert", space_options="no_such=1")
    with pytest.raises(ConfigError, match="minilm-frozen"):
        get_method("embed-invert").distill(get_task("mr").subset(train_per_class=5, test_size=5), 1,
                                           get_learner("textcnn-glove"), 0)


def test_embed_invert_refuses_a_private_space():
    """DP vectors would still be written as text from the private sentences (nearest, prompts, inverter, probe)."""
    with pytest.raises(ConfigError, match="dp_epsilon"):
        get_method("embed-invert", space_options="dp_epsilon=4,init=noise")
    with pytest.raises(ConfigError, match="dp_epsilon"):
        get_method("embed-invert", space="dc", space_options="dp_epsilon=4,init=noise")


@pytest.mark.slow
def test_search_with_the_offline_lm_improves_or_keeps_fidelity(small):
    ds = get_method("embed-invert", space_options="iterations=5", inverter="search", candidates=2, rounds=1,
                    max_new_tokens=16).distill(small, 1, get_learner("minilm-frozen"), 0)
    f = ds.provenance.fidelity
    assert all(a >= b - 1e-6 for a, b in zip(f["cosine_to_target"], f["nearest_real_cosine"]))


def test_trained_inverter_reconstructs_its_training_sentences_and_resumes(small, tiny_generator, tmp_path,
                                                                         monkeypatch):
    """A two-layer LM trained to write 8 MR sentences back from their MiniLM vectors: its greedy sentence is closer
    to each target than the other training sentences are (a chance inverter would not be), and a training
    killed after its first checkpoint resumes to the same weights."""
    import torch

    from textdistill.lm.inverter import InverterSettings, train_inverter

    monkeypatch.setenv("TEXTDISTILL_CACHE", str(tmp_path))
    enc = get_learner("minilm-frozen")
    texts = small.columns("train")[0][:8]
    vectors = enc.sentence_vectors(texts, cache=False)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    settings = InverterSettings(lm=tiny_generator, prefix=2, lora_rank=0, steps=150, batch=8, lr=3e-3, max_tokens=12)
    inv = train_inverter(vectors, texts, settings, key="tiny")
    written = [c[0] for c in inv.write(torch.from_numpy(vectors), n=1, max_new_tokens=12, seed=0)]
    back = enc.sentence_vectors(written, cache=False)
    back /= np.linalg.norm(back, axis=1, keepdims=True)
    own = (back * vectors).sum(1)
    others = (vectors @ vectors.T)[~np.eye(8, dtype=bool)].reshape(8, 7).mean(1)
    assert own.mean() > others.mean() + 0.2, (written, own, others)
    assert (tmp_path / "inverters" / "tiny.safetensors").exists()
    assert not (tmp_path / "inverters" / "tiny.partial.pt").exists()

    # killed after the first checkpoint (step 5): the rerun starts there and ends where an unbroken run ends
    short = InverterSettings(lm=tiny_generator, prefix=2, lora_rank=0, steps=8, batch=4, max_tokens=12,
                             checkpoint_every=5)
    whole = train_inverter(vectors, texts, short, key="whole").trainable()

    def crash(self, *a, **k):
        if crash.calls == 6:
            raise KeyboardInterrupt
        crash.calls += 1
        return loss(self, *a, **k)

    from textdistill.lm.inverter import Inverter

    loss, crash.calls = Inverter.loss, 0
    monkeypatch.setattr(Inverter, "loss", crash)
    with pytest.raises(KeyboardInterrupt):
        train_inverter(vectors, texts, short, key="broken")
    assert (tmp_path / "inverters" / "broken.partial.pt").exists()
    monkeypatch.setattr(Inverter, "loss", loss)
    resumed = train_inverter(vectors, texts, short, key="broken").trainable()
    assert all(torch.allclose(whole[k], resumed[k], atol=1e-6) for k in whole)


def test_trained_inverter_writes_a_text_set_with_its_fidelity(small, tiny_generator, tmp_path, monkeypatch):
    """The logged fidelity is measured, not assumed: each written sentence's cosine to the vector it was written
    for (the space method's, made again here), and the share of labels a probe on the real data agrees with."""
    from textdistill.learners import unit
    from textdistill.methods.base import label_probe

    monkeypatch.setenv("TEXTDISTILL_CACHE", str(tmp_path))
    learner = get_learner("minilm-frozen")
    method = get_method("embed-invert", inverter="trained", lm=tiny_generator, inverter_steps=3, lora_rank=0,
                        candidates=3, max_new_tokens=8, space_options="iterations=3")
    ds = method.distill(small, 2, learner, seed=0)
    assert ds.kind == "text" and len(ds) == 4 and all(ds.texts) and ds.hard_labels.tolist() == [0, 0, 1, 1]
    f = ds.provenance.fidelity
    targets = unit(get_method("dm", iterations=3).distill(small, 2, learner, seed=0).tensors["features"].numpy())
    written = unit(learner.sentence_vectors(ds.texts, cache=False))
    assert f["cosine_to_target"] == pytest.approx((written * targets).sum(1).tolist(), abs=1e-3)
    agree = label_probe(small, learner).predict(written) == ds.hard_labels.numpy()
    assert f["probe_label_agreement"] == pytest.approx(agree.mean())
    assert len(list((tmp_path / "inverters").glob("*.safetensors"))) == 1  # trained once, cached for the next set
