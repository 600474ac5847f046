import json

import pytest
import torch

from textdistill.errors import ArtifactError
from textdistill.learners import get_learner
from textdistill.distilled import DistilledDataset


def text_set(**kw):
    return DistilledDataset(**{"kind": "text", "texts": ["good", "bad"], "labels": torch.tensor([1, 0]),
                               "label_names": ["negative", "positive"], "method": "test", **kw})


def embedding_set():
    return DistilledDataset(kind="token-embeddings", labels=torch.softmax(torch.randn(2, 2), -1),
                            label_names=["negative", "positive"], bound_to={"id": "textcnn-glove"},
                            tensors={"inputs_embeds": torch.randn(2, 4, 50), "attention_mask": torch.ones(2, 4, dtype=torch.long)},
                            lrs=torch.tensor([0.1, 0.05]), method="test")


def test_text_round_trip_and_dataset(tmp_path):
    ds = text_set(recipe={"steps": 10})
    ds.save(tmp_path / "a")
    back = DistilledDataset.load(tmp_path / "a")
    assert back.texts == ds.texts and torch.equal(back.labels, ds.labels) and back.recipe == {"steps": 10}
    assert back.fingerprint() == ds.fingerprint()
    hf = back.to_dataset()
    assert hf.features["label"].names == ["negative", "positive"] and hf["text"] == ["good", "bad"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["data.jsonl", "manifest.json", "tensors.safetensors"]


def test_label_weights_are_the_weights_tensor_beside_the_labels():
    assert text_set().label_weights is None and embedding_set().label_weights is None  # hard; distributions
    weighted = text_set(labels=torch.tensor([[0.0, 1.0], [1.0, 0.0]]), per_example={"weights": torch.tensor([1.5, 0.5])})
    assert torch.equal(weighted.label_weights, torch.tensor([1.5, 0.5]))
    assert weighted.to_dataset()["weight"] == [1.5, 0.5] and weighted.to_dataset()["soft_label"] == [[0, 1], [1, 0]]
    assert text_set(labels=torch.tensor([[0.0, 1.5], [0.5, 0.0]])).label_weights is None  # row masses are no weights


def test_embedding_round_trip_and_binding(tmp_path):
    ds = embedding_set()
    ds.save(tmp_path / "e")
    back = DistilledDataset.load(tmp_path / "e")
    torch.testing.assert_close(back.tensors["inputs_embeds"], ds.tensors["inputs_embeds"])
    torch.testing.assert_close(back.lrs, ds.lrs)
    assert back.labels.dtype == torch.float32
    assert back.inputs_for(get_learner("textcnn-glove"))["inputs_embeds"].shape == (2, 4, 50)
    with pytest.raises(ArtifactError, match="bound to learner 'textcnn-glove' and cannot train 'minilm'"):
        back.inputs_for(get_learner("minilm"))
    with pytest.raises(ArtifactError, match="only a text set"):
        back.to_dataset()


def test_existing_output_is_not_touched(tmp_path):
    text_set().save(tmp_path / "a")
    before = (tmp_path / "a" / "manifest.json").read_text()
    with pytest.raises(ArtifactError, match="exists"):
        embedding_set().save(tmp_path / "a")
    assert (tmp_path / "a" / "manifest.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # no temp dir left behind


def test_failed_save_leaves_nothing(tmp_path):
    ds = text_set()
    ds.config = {"bad": object()}  # not JSON-serialisable: fails mid-write
    with pytest.raises(TypeError):
        ds.save(tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


def test_corrupt_and_foreign_directories(tmp_path):
    with pytest.raises(ArtifactError, match="missing manifest.json, tensors.safetensors, data.jsonl"):
        DistilledDataset.load(tmp_path)
    text_set().save(tmp_path / "a")
    m = tmp_path / "a" / "manifest.json"
    manifest = json.loads(m.read_text())
    m.write_text(json.dumps({**manifest, "format": "other/1"}))
    with pytest.raises(ArtifactError, match="is not 'textdistill.distilled/3'"):
        DistilledDataset.load(tmp_path / "a")
    m.write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        DistilledDataset.load(tmp_path / "a")
    m.write_text(json.dumps(manifest))
    (tmp_path / "a" / "tensors.safetensors").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="unreadable safetensors"):
        DistilledDataset.load(tmp_path / "a")


def test_invalid_kind():
    with pytest.raises(ArtifactError, match="kind must be one of"):
        DistilledDataset(kind="images", labels=torch.tensor([0]), label_names=["a"])


def test_sets_of_the_first_format_load_with_their_one_learner_field_split(tmp_path):
    """Format 1 kept one `learner` record: the bound learner of a vector set, the selection space of a text set."""
    import json

    for ds, bound in ((text_set(), None), (embedding_set(), {"id": "textcnn-glove"})):
        ds.made_with = {"id": "minilm"} if bound is None else bound
        ds.save(tmp_path / ds.kind)
        m = json.loads((tmp_path / ds.kind / "manifest.json").read_text())
        assert m["bound_to"] == bound and m["made_with"] == ds.made_with
        old = {k: v for k, v in m.items() if k not in ("bound_to", "made_with")}
        old.update(format="textdistill.distilled/1", learner=ds.made_with)
        (tmp_path / ds.kind / "manifest.json").write_text(json.dumps(old))
        back = DistilledDataset.load(tmp_path / ds.kind)
        assert back.bound_to == bound and back.made_with == ds.made_with and back.fingerprint() == ds.fingerprint()
