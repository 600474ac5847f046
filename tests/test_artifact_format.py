"""The third artifact format: per-example tensors beside the labels, explicit example weights, the training loss
named in the recipe, typed provenance; and sets of the first two formats, which load as the third holds them and
train exactly as they did."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from textdistill.distilled import FORMAT, DistilledDataset, Provenance
from textdistill.errors import ArtifactError, ConfigError
from textdistill.learners import FeatureLearner
from textdistill.losses import AttentionLabelLoss, WeightedLoss, set_loss, weighted_loss
from textdistill.recipe import Recipe
from textdistill.train import loss_fn, train

NAMES = ["negative", "positive"]
LAYERS, HEADS, L = 1, 2, 3


class TinyAttention(FeatureLearner):
    """A linear model on 4 features whose extra outputs stand for one layer's attention (2 heads, 3 positions)."""

    name = "tiny-attention"

    @property
    def default_recipe(self):
        return Recipe(steps=12, lr=0.05, batch_size=3, warmup=0.2, weight_decay=0.01, dropout=False)

    def build(self, num_labels, seed):
        torch.manual_seed(seed)
        return torch.nn.Linear(4, num_labels + HEADS * L * L)

    def encode(self, texts, pairs=None):
        raise NotImplementedError

    def forward(self, model, params, inputs, attentions=False):
        out = torch.func.functional_call(model, params, (inputs["features"],))
        logits = out[:, :2]
        if not attentions:
            return logits
        return logits, (out[:, 2:].view(-1, HEADS, L, L).softmax(-1),)

    def _sentence_vectors(self, texts, pairs):
        raise NotImplementedError


def features_set(n=5, **kw):
    gen = torch.Generator().manual_seed(0)
    return DistilledDataset(**{"kind": "features", "labels": torch.randn(n, 2, generator=gen).softmax(-1),
                               "label_names": NAMES, "bound_to": {"id": TinyAttention.name}, "method": "test",
                               "tensors": {"features": torch.randn(n, 4, generator=gen)}, **kw})


def write_second_format(folder, ds: DistilledDataset, tensors: dict, recipe=None, log=None):
    """A set as the second format wrote it: attention labels in a tensor of their own, weights as row masses (the
    caller's labels), the attention weight in the recipe and the provenance in the log."""
    folder.mkdir()
    manifest = {"format": "textdistill.distilled/2", "kind": ds.kind, "size": len(ds), "label_names": NAMES,
                "soft_labels": True, "bound_to": ds.bound_to, "made_with": ds.bound_to, "method": "bptt",
                "config": {}, "seed": 0, "task": {"name": "mr"}, "recipe": recipe, "source_indices": None,
                "log": log or {}, "created": "2025-01-01T00:00:00+00:00", "version": "0.1.0"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "tensors.safetensors"))
    (folder / "data.jsonl").write_text("".join(json.dumps({"index": i, "label": "negative"}) + "\n"
                                               for i in range(len(ds))))


def trained(ds: DistilledDataset, labels=None, loss="set"):
    """A tiny learner trained on the set as evaluation trains it (its recipe, its loss hook), or on ``labels``
    with ``loss``: (parameters, every step's loss)."""
    learner = TinyAttention()
    values = learner.default_recipe.to_dict()
    values.update(ds.recipe or {})
    recipe = Recipe.from_dict(values)
    losses: list[float] = []
    params = train(learner, learner.build(2, 7), ds.inputs_for(learner), ds.labels if labels is None else labels,
                   recipe, seed=3, loss=set_loss(ds, recipe) if loss == "set" else loss, losses=losses)
    return params, losses


def assert_same_training(a, b, exact=False):
    (pa, la), (pb, lb) = a, b
    for k in pa:
        if exact:
            assert torch.equal(pa[k], pb[k]), k
        else:
            torch.testing.assert_close(pa[k], pb[k], rtol=1e-5, atol=1e-6)
    assert la == pytest.approx(lb, rel=1e-5, abs=1e-6)


# -- per-example tensors -------------------------------------------------------------------------------------------
def test_per_example_tensors_round_trip_and_are_fingerprinted(tmp_path):
    gen = torch.Generator().manual_seed(1)
    att = torch.randn(5, LAYERS, HEADS, L, generator=gen).softmax(-1)
    difficulty = torch.arange(5.0)  # any name: a new per-example tensor needs no new field
    ds = features_set(per_example={"attention_labels": att, "weights": torch.rand(5, generator=gen) + 0.5,
                                   "difficulty": difficulty}, provenance=Provenance(set_key="abc"))
    path = ds.save(tmp_path / "s")
    m = json.loads((path / "manifest.json").read_text())
    assert m["format"] == FORMAT == "textdistill.distilled/3" and "attention_labels" not in m
    assert m["per_example"] == ["attention_labels", "difficulty", "weights"]
    assert m["provenance"] == {"set_key": "abc"} and m["log"] == {}
    assert {"per_example.attention_labels", "per_example.difficulty", "per_example.weights"} <= set(
        load_file(str(path / "tensors.safetensors")))
    back = DistilledDataset.load(path)
    assert back.per_example.keys() == ds.per_example.keys()
    for k, v in ds.per_example.items():
        assert torch.equal(back.per_example[k], v)
    assert torch.equal(back.attention_labels, att) and torch.equal(back.label_weights, ds.per_example["weights"])
    assert back.provenance == Provenance(set_key="abc") and back.fingerprint() == ds.fingerprint()
    changed = features_set(per_example={**ds.per_example, "difficulty": difficulty + 1})
    assert changed.fingerprint() != ds.fingerprint()  # the tensors are content: evaluation caches are keyed by it


def test_a_per_example_tensor_of_the_wrong_length_is_refused_by_name(tmp_path):
    with pytest.raises(ArtifactError, match=r"tensor per_example\.weights has 4 rows .* the set has 5 examples"):
        features_set(per_example={"weights": torch.ones(4)})
    with pytest.raises(ArtifactError, match=r"per_example\.weights must be one finite non-negative number"):
        features_set(per_example={"weights": -torch.ones(5)})
    with pytest.raises(ArtifactError, match=r"per_example\.attention_labels must be float \[n, layers, heads, L\]"):
        features_set(per_example={"attention_labels": torch.ones(5, 3)})
    path = features_set(per_example={"difficulty": torch.zeros(5)}).save(tmp_path / "s")
    tensors = load_file(str(path / "tensors.safetensors"))
    save_file({**tensors, "per_example.difficulty": torch.zeros(3)}, str(path / "tensors.safetensors"))
    with pytest.raises(ArtifactError, match=r"tensors\.safetensors: tensor per_example\.difficulty has 3 rows") as e:
        DistilledDataset.load(path)
    assert str(path) in str(e.value)
    save_file({**tensors, "per_example.other": torch.zeros(5)}, str(path / "tensors.safetensors"))
    with pytest.raises(ArtifactError, match=r"holds per-example tensors \['difficulty', 'other'\], but the manifest"):
        DistilledDataset.load(path)


def test_provenance_is_its_own_checked_object(tmp_path):
    dp = {"mechanism": "Gaussian", "epsilon": 4.0, "delta": 1e-5, "noise_multiplier": 1.1, "clip": 1.0, "steps": 2}
    made = Provenance(distill_step={"seconds": 1.5, "peak_rss_mib": 100}, data_parallel_work=[3, 3], dp=dp)
    path = features_set(provenance=made, log={"real_loss": [0.5]}).save(tmp_path / "s")
    m = json.loads((path / "manifest.json").read_text())
    assert m["provenance"] == {"distill_step": {"seconds": 1.5, "peak_rss_mib": 100}, "data_parallel_work": [3, 3],
                               "dp": dp} and m["log"] == {"real_loss": [0.5]}
    assert DistilledDataset.load(path).provenance == made
    for bad, what in (({"dp": {**dp, "epsilon": "4"}}, "provenance 'dp' must be"), ({"seed_key": "x"}, "unknown"),
                      ({"set_key": 3}, "provenance 'set_key' must be a string")):
        (path / "manifest.json").write_text(json.dumps({**m, "provenance": bad}))
        with pytest.raises(ArtifactError, match=what):
            DistilledDataset.load(path)


# -- the loss named in the recipe -------------------------------------------------------------------------------
def test_weighted_loss_is_the_soft_cross_entropy_of_rows_scaled_by_the_weights():
    gen = torch.Generator().manual_seed(2)
    logits, w = torch.randn(6, 3, generator=gen), torch.rand(6, generator=gen) * 2
    rows = torch.randn(6, 3, generator=gen).softmax(-1)
    torch.testing.assert_close(weighted_loss(logits, rows, w), loss_fn(logits, rows * w[:, None]))
    hard = torch.randint(0, 3, (6,), generator=gen)
    one_hot = torch.nn.functional.one_hot(hard, 3).float()
    torch.testing.assert_close(weighted_loss(logits, hard, w), loss_fn(logits, one_hot * w[:, None]))


def test_the_recipe_names_the_loss_and_the_registry_builds_its_hook():
    plain, weights = features_set(), torch.rand(5) + 0.5
    assert set_loss(plain, Recipe()) is None and set_loss(None, Recipe()) is None  # the loop's own cross-entropy
    hook = set_loss(features_set(per_example={"weights": weights}), Recipe())
    assert isinstance(hook, WeightedLoss) and torch.equal(hook.weights, weights) and not hook.eager
    att = torch.rand(5, LAYERS, HEADS, L).softmax(-1)
    hook = set_loss(features_set(per_example={"attention_labels": att}),
                    Recipe(loss="attention-kl", loss_options={"weight": 0.5}))
    assert isinstance(hook, AttentionLabelLoss) and hook.weight == 0.5 and hook.example_weights is None and hook.eager
    assert set_loss(features_set(per_example={"attention_labels": att}), Recipe(loss="attention-kl")).weight == 1.0
    with pytest.raises(ConfigError, match="has no option"):
        set_loss(plain, Recipe(loss_options={"weight": 2.0}))
    with pytest.raises(ConfigError, match="unknown recipe loss 'focal'; known: cross-entropy, attention-kl"):
        set_loss(plain, Recipe(loss="focal"))
    with pytest.raises(ConfigError, match="attention labels, and this features set has none"):
        set_loss(plain, Recipe(loss="attention-kl"))
    with pytest.raises(ConfigError, match="needs option weight >= 0"):
        set_loss(features_set(per_example={"attention_labels": att}),
                 Recipe(loss="attention-kl", loss_options={"weight": -1.0}))
    # recipes written before the loss was named: the attention weight goes with attention-kl, else nowhere
    assert Recipe.from_dict({"steps": 5, "attention_weight": 0.3}) == Recipe(steps=5)
    assert Recipe.from_dict({"loss": "attention-kl", "attention_weight": 0.3}).loss_options == {"weight": 0.3}


# -- the second format ---------------------------------------------------------------------------------------------
def test_a_second_format_set_with_mass_weights_loads_and_trains_as_it_did(tmp_path):
    ds = features_set()
    weights = torch.tensor([0.5, 1.5, 0.2, 2.0, 0.8])
    masses = ds.labels * weights[:, None]  # how learned-labels --learn weights|both wrote its weights
    dp = {"mechanism": "Gaussian", "epsilon": 4.0, "delta": 1e-5, "noise_multiplier": 1.1, "clip": 1.0, "steps": 2}
    log = {"real_loss": [0.7, 0.6], "distill_step": {"seconds": 2.0, "peak_rss_mib": 10, "rss_scope": "step"},
           "set_key": "k", "data_parallel_work": [4, 4], "dp": dp,
           "fidelity": {"mean_cosine_to_target": 0.9, "mean_nearest_real_cosine": 0.8}}
    write_second_format(tmp_path / "old", ds, {"labels": masses, "examples.features": ds.tensors["features"]},
                        recipe={"steps": 12, "attention_weight": 1.0}, log=log)
    old = DistilledDataset.load(tmp_path / "old")
    torch.testing.assert_close(old.labels, ds.labels)
    torch.testing.assert_close(old.labels.sum(-1), torch.ones(5))
    torch.testing.assert_close(old.label_weights, weights)
    assert old.log == {"real_loss": [0.7, 0.6]} and old.recipe == {"steps": 12}
    assert old.provenance == Provenance(distill_step=log["distill_step"], set_key="k", data_parallel_work=[4, 4],
                                        dp=dp, fidelity=log["fidelity"])
    # what evaluation did with the second format: its plain loss on the mass-weighted rows
    before = trained(old, labels=masses, loss=None)
    assert_same_training(trained(old), before)
    old.save(tmp_path / "new")  # saving writes the third format
    new = DistilledDataset.load(tmp_path / "new")
    assert json.loads((tmp_path / "new" / "manifest.json").read_text())["format"] == FORMAT
    assert new.fingerprint() == old.fingerprint() and new.provenance == old.provenance
    assert_same_training(trained(new), trained(old), exact=True)
    # the same set written as the third format in the first place
    third = features_set(labels=old.labels, per_example={"weights": weights}, recipe={"steps": 12})
    assert_same_training(trained(third), before)


def test_a_second_format_set_with_attention_labels_loads_and_trains_as_it_did(tmp_path):
    ds = features_set()
    att = torch.rand(5, LAYERS, HEADS, L, generator=torch.Generator().manual_seed(3)).softmax(-1)
    recipe = {"steps": 12, "lr": 0.05, "attention_weight": 0.5}
    write_second_format(tmp_path / "old", ds, {"labels": ds.labels, "examples.features": ds.tensors["features"],
                                               "attention_labels": att}, recipe=recipe)
    old = DistilledDataset.load(tmp_path / "old")
    assert torch.equal(old.attention_labels, att) and old.label_weights is None and torch.equal(old.labels, ds.labels)
    assert old.recipe == {"steps": 12, "lr": 0.05, "loss": "attention-kl", "loss_options": {"weight": 0.5}}
    # what evaluation did with the second format: the attention hook at the recipe's attention_weight
    before = trained(old, loss=AttentionLabelLoss(att, 0.5))
    assert_same_training(trained(old), before, exact=True)
    plain = trained(old, loss=None)
    assert plain[1] != before[1]  # the attention term is trained on
    old.save(tmp_path / "new")
    new = DistilledDataset.load(tmp_path / "new")
    assert new.recipe == old.recipe and torch.equal(new.attention_labels, att)
    assert_same_training(trained(new), before, exact=True)


def test_a_second_format_set_without_attention_labels_drops_the_attention_weight(tmp_path):
    ds = features_set()
    write_second_format(tmp_path / "old", ds, {"labels": ds.labels, "examples.features": ds.tensors["features"]},
                        recipe={"steps": 12, "attention_weight": 1.0})
    old = DistilledDataset.load(tmp_path / "old")
    assert old.recipe == {"steps": 12} and old.per_example == {} and old.provenance == Provenance()
    unrestricted = ds.labels - 0.5  # rows with negative entries (bptt's unrestricted labels) are no weights
    write_second_format(tmp_path / "signed", ds, {"labels": unrestricted, "examples.features": ds.tensors["features"]})
    signed = DistilledDataset.load(tmp_path / "signed")
    assert torch.equal(signed.labels, unrestricted) and signed.label_weights is None


def test_evaluation_imports_no_method():
    code = ("import sys, textdistill.evaluation, textdistill.losses; "
            "print(sorted(m for m in sys.modules if m.startswith('textdistill.methods')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
