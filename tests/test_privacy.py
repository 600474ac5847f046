"""Differential privacy: the accountant's noise, the mechanism's draws and bounds, and what a DP set publishes."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from textdistill.data import get_task
from textdistill.errors import ConfigError
from textdistill.learners import get_learner
from textdistill.methods import get_method
from textdistill.privacy import SecureRandom, epsilon, noise_multiplier, noisy_mean, plan


@pytest.fixture(scope="module")
def mr40():
    return get_task("mr").subset(train_per_class=40, test_size=20, seed=0)


def private_tasks(per_class: int = 20):
    """Two tasks with the same public description and class sizes but different training texts: the first
    ``per_class`` texts of each MR class, and the next ``per_class``."""
    from textdistill.data import TaskSpec, build_task

    mr = get_task("mr")
    texts, _, labels = mr.columns("train")
    labels = np.asarray(labels)
    spec = TaskSpec(**{**mr.spec.to_dict(), "name": "private"})
    test = mr.subset(test_size=20, seed=0).columns("test")
    out = []
    for part in range(2):
        rows = np.concatenate([np.flatnonzero(labels == c)[part * per_class:(part + 1) * per_class] for c in (0, 1)])
        out.append(build_task(spec, ([texts[i] for i in rows], None, labels[rows].tolist()), test))
    return out


def published(ds, tmp_path, name: str) -> dict:
    """The manifest as written to disk, without what the mechanism's outputs determine (the loss curves and ADMM
    residuals, post-processing of the noisy releases) and the time of writing."""
    m = json.loads((ds.save(tmp_path / name) / "manifest.json").read_text())
    del m["created"]
    for key in ("matching_loss", "admm"):
        m["log"].pop(key, None)
    return m


def test_noise_multiplier_meets_the_target_epsilon_of_the_accountant():
    sigma = noise_multiplier(4.0, 1e-5, 0.05, 200)
    assert epsilon(sigma, 1e-5, 0.05, 200) <= 4.0 < epsilon(sigma * 0.99, 1e-5, 0.05, 200)
    assert noise_multiplier(1.0, 1e-5, 0.05, 200) > sigma > noise_multiplier(8.0, 1e-5, 0.05, 200)
    with pytest.raises(ConfigError, match="epsilon > 0"):
        noise_multiplier(0.0, 1e-5, 0.05, 200)


def test_noisy_mean_bounds_what_one_row_changes_and_adds_the_calibrated_noise():
    rows = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    exact = noisy_mean(rows, clip=1.0, sigma=0.0, expected=2.0, source=SecureRandom())
    assert torch.allclose(exact, torch.tensor([(0.6 + 0.3) / 2, (0.8 + 0.4) / 2]))  # the first row clipped to 1
    # one more row, however large, moves the clipped sum by at most the clip
    outlier = torch.cat([rows, torch.tensor([[-3e6, 4e6]])])
    moved = (noisy_mean(outlier, 1.0, 0.0, 1.0, SecureRandom()) - noisy_mean(rows, 1.0, 0.0, 1.0, SecureRandom()))
    assert float(moved.norm()) == pytest.approx(1.0, rel=1e-5)
    draws = torch.stack([noisy_mean(rows, 1.0, 2.0, 1.0, SecureRandom()) for _ in range(2000)])
    assert draws.std(0).mean() == pytest.approx(2.0, rel=0.05)  # sigma x clip / expected
    assert (draws.mean(0) - torch.tensor([0.9, 1.2])).abs().max() < 0.2  # centred on the clipped sum


def test_secure_draws_are_poisson_at_the_rate_standard_normal_and_not_replayed_by_seeds():
    rows = np.arange(50)
    picks = [SecureRandom().sample(rows, 0.2) for _ in range(2000)]
    counts = np.array([len(p) for p in picks])
    assert abs(counts.mean() - 10) < 0.3 and abs(counts.var() - 8) < 1.5  # binomial(50, 0.2): mean 10, variance 8
    each = np.bincount(np.concatenate(picks), minlength=50) / 2000
    assert np.abs(each - 0.2).max() < 0.05  # every row with the same probability
    z = SecureRandom().normal((200_000,), torch.float64)
    assert abs(float(z.mean())) < 0.02 and float(z.std()) == pytest.approx(1.0, abs=0.01)
    assert float((z.abs() > 3).double().mean()) == pytest.approx(0.0027, abs=0.001)  # Gaussian tails
    draws = []
    for _ in range(2):
        torch.manual_seed(0)
        np.random.seed(0)
        draws.append(SecureRandom().normal((8,)))
    assert not torch.equal(*draws)  # no seed replays them


def test_the_plan_reads_public_sizes_only_and_delta_follows_the_task_size():
    from textdistill.data import TaskSpec, build_task

    spec = TaskSpec("t", ("a", "b"))
    test = (["x", "y"], None, [0, 1])
    balanced = build_task(spec, ([f"s{i}" for i in range(80)], None, [i % 2 for i in range(80)]), test)
    skewed = build_task(spec, ([f"s{i}" for i in range(80)], None, [int(i < 20) for i in range(80)]), test)
    method = get_method("dm", dp_epsilon=4.0, init="noise", iterations=20, real_batch=8)
    p = method.dp_plan(balanced)
    assert p == method.dp_plan(skewed)  # the class sizes differ, nothing in the plan does
    assert p["sampling_rate"] == 2 * 8 / 80 and p["expected_batch"] == pytest.approx(8) and p["steps"] == 20
    assert p["delta"] == 1e-5 and p["epsilon"] <= 4.0 and "os.urandom" in p["randomness"]
    # a large task (dbpedia's 560k rows, 14 classes): delta well below 1/N by default
    big = method.dp_plan(SimpleNamespace(num_classes=14, train=range(560_000)))
    assert big["delta"] == pytest.approx(1 / 5_600_000) and big["sampling_rate"] == pytest.approx(14 * 8 / 560_000)
    with pytest.raises(ConfigError, match="not below 1/N"):
        plan("m", 8, 2, 1000, 4.0, 1e-3, 1.0, 20)


def test_dp_dm_draws_fresh_noise_for_every_run_and_plain_runs_repeat(mr40):
    learner = get_learner("minilm-frozen")
    options = {"iterations": 20, "init": "noise", "real_batch": 8}
    dp = [get_method("dm", dp_epsilon=4.0, **options).distill(mr40, 2, learner, seed=0) for _ in range(2)]
    assert not torch.equal(dp[0].tensors["features"], dp[1].tensors["features"])  # same seed, new noise
    assert all(torch.isfinite(ds.tensors["features"]).all() for ds in dp)
    assert dp[0].provenance.dp["epsilon"] <= 4.0 and "not replay" in dp[0].provenance.dp["randomness"]
    plain = [get_method("dm", **options).distill(mr40, 2, learner, seed=0) for _ in range(2)]
    assert torch.equal(plain[0].tensors["features"], plain[1].tensors["features"]) and plain[0].provenance.dp is None


@pytest.mark.parametrize("options, what", [({"init": "real"}, "init real"), ({"init": "noise", "labels": "soft"}, "teacher"),
                                           ({"init": "noise", "kernel": "mmd"}, "MMD")])
def test_dp_dm_refuses_what_reads_private_data_outside_the_mechanism(options, what):
    with pytest.raises(ConfigError, match=what):
        get_method("dm", dp_epsilon=1.0, **options)


def test_a_dp_manifest_is_the_same_for_other_private_texts_of_the_same_sizes(tmp_path, tiny_generator):
    """Everything a DP set publishes beside the mechanism's outputs is public: no fingerprint of the data, no
    source rows, no count of a class. Plain sets of the two tasks differ (they do record the data)."""
    first, second = private_tasks()
    cases = [("dm", get_learner("minilm-frozen"), {"iterations": 3, "real_batch": 4}),
             ("dc", get_learner("textcnn-glove"), {"outer_loops": 1, "inner_loops": 2, "length": 6, "real_batch": 4}),
             ("gradmm", get_learner(tiny_generator), {"iterations": 2, "embed_steps": 1, "length": 4, "real_batch": 3})]
    for method, learner, options in cases:
        made = {}
        for name, task in (("first", first), ("second", second)):
            for mode, dp in (("dp", {"dp_epsilon": 8.0}), ("plain", {})):
                ds = get_method(method, init="noise", **options, **dp).distill(task, 2, learner, seed=0)
                made[mode, name] = published(ds, tmp_path, f"{method}-{mode}-{name}")
        assert made["dp", "first"] == made["dp", "second"], method
        assert "fingerprint" not in made["dp", "first"]["task"] and made["dp", "first"]["source_indices"] is None
        assert made["plain", "first"] != made["plain", "second"]  # the fingerprint and the rows the noise scale read


def test_dp_init_noise_reads_no_training_row(mr40, monkeypatch):
    """A private set's starting noise takes its scale from public statistics: it never encodes a training text."""
    from textdistill.learners.frozen import FrozenEncoderLearner
    from textdistill.methods.learned_set import SyntheticSet

    learner = get_learner("minilm-frozen")
    private = set(mr40.columns("train")[0])
    vectors = FrozenEncoderLearner.sentence_vectors  # what encode and every other read of texts go through
    seen = []
    monkeypatch.setattr(FrozenEncoderLearner, "sentence_vectors", lambda self, texts, pairs=None, cache=True:
                        seen.extend(texts) or vectors(self, texts, pairs, cache))
    syn = SyntheticSet(mr40, 3, learner, np.random.default_rng(0), init="noise", private=True)
    assert syn.source_indices is None and syn.hard.tolist() == [0, 0, 0, 1, 1, 1] and not private & set(seen)
    SyntheticSet(mr40, 3, learner, np.random.default_rng(0), init="noise")
    assert private & set(seen)  # the plain noise start reads rows for its scale: the check above can fail


def test_dc_private_gradient_bounds_one_example_and_noises_at_sigma_times_clip(mr40):
    """Per-example clipping bounds the sensitivity: an outlier example moves the clipped sum of the gradients by
    at most the clip (unclipped, by far more); the noise's spread is sigma x clip; with every row sampled, no
    clipping and no noise, the mechanism's mean is the plain mean gradient."""
    from textdistill.methods.matching import private_real_gradient, real_gradient
    from textdistill.methods.learned_set import fresh_parameters, real_inputs

    learner = get_learner("minilm-frozen").for_task(mr40)
    model = learner.build(2, seed=0).eval()
    params = fresh_parameters(model)
    names = [k for k, v in model.named_parameters() if v.requires_grad]
    real, real_y, per_class = real_inputs(mr40, learner)
    rows = per_class[0][:10]
    big = 1e4 * real["features"][rows[:1]]
    with torch.no_grad():  # labelled as the class the model finds least likely: a large gradient, not a saturated 0
        wrong = learner.forward(model, params, {"features": big}).argmin(-1)
    outlier, outlier_y = {"features": torch.cat([real["features"], big])}, torch.cat([real_y, wrong])
    with_outlier = np.append(rows, len(real_y))

    def clipped_sum(inputs, labels, idx, clip, sigma=0.0, expected=1.0):
        plan = {"sampling_rate": 1.0, "clip": clip, "noise_multiplier": sigma, "expected_batch": expected}
        grads = private_real_gradient(learner, model, params, names, inputs, labels, idx, plan, SecureRandom(), "cpu")
        return torch.cat([g.flatten() for g in grads])

    mean = torch.cat([g.flatten() for g in real_gradient(learner, model, params, names, real, real_y,
                                                         torch.as_tensor(rows), "cpu")])
    torch.testing.assert_close(clipped_sum(real, real_y, rows, 1e12, expected=len(rows)), mean, rtol=1e-4, atol=1e-6)

    moved = clipped_sum(outlier, outlier_y, with_outlier, 0.5) - clipped_sum(real, real_y, rows, 0.5)
    assert float(moved.norm()) <= 0.5 + 1e-5
    unclipped = clipped_sum(outlier, outlier_y, with_outlier, 1e12) - clipped_sum(real, real_y, rows, 1e12)
    assert float(unclipped.norm()) > 100
    exact = clipped_sum(real, real_y, rows, 0.5)
    noise = torch.stack([clipped_sum(real, real_y, rows, 0.5, sigma=3.0) - exact for _ in range(10)])
    assert float(noise.std()) == pytest.approx(3.0 * 0.5, rel=0.05) and abs(float(noise.mean())) < 0.1


def test_dp_dc_clips_only_the_tensors_the_synthetic_set_matches(tiny_generator, mr40, monkeypatch):
    """A decoder learner's real gradient reaches its token table, the synthetic embeddings never do: the clip
    (and the noise) covers the matched tensors alone, so none of it is spent on the table."""
    import textdistill.methods.matching as matching

    learner = get_learner(tiny_generator).for_task(mr40)
    model = learner.build(2, seed=0)
    table = model.get_input_embeddings().weight
    matched = sum(v.numel() for v in model.parameters() if v.requires_grad and v is not table)
    widths = []
    mechanism = matching.noisy_mean
    monkeypatch.setattr(matching, "noisy_mean", lambda rows, *a: widths.append(rows.shape[1]) or mechanism(rows, *a))
    ds = get_method("dc", dp_epsilon=8.0, init="noise", outer_loops=1, inner_loops=2, length=4,
                    real_batch=3).distill(mr40, 1, learner, seed=0)
    assert widths == [matched] * 4  # 2 classes x 2 matching steps
    assert ds.provenance.dp["steps"] == 2 and ds.provenance.dp["sampling_rate"] == 2 * 3 / 80


def test_bench_and_show_publish_nothing_of_the_private_data_beside_a_dp_set(tmp_path, capsys):
    """No page (nearest real training sentences, a map of the private data) and no set key (it holds the task's
    fingerprint) in a DP set that bench writes; the key kept beside the sets still resumes it; show --html refuses."""
    from textdistill.bench import Cell, Runner, parse_suite
    from textdistill.cli import main

    suite = parse_suite({"tasks": [{"name": "mr", "subset": {"train_per_class": 12, "test_size": 20, "seed": 0}}],
                         "learners": ["minilm-frozen"], "dpc": [1],
                         "methods": [{"label": "dm-dp", "method": "dm",
                                      "options": {"dp_epsilon": 8, "init": "noise", "iterations": 2, "real_batch": 4}},
                                     {"label": "dm", "method": "dm", "options": {"iterations": 2, "real_batch": 4}}]})
    runner = Runner(suite, tmp_path / "out")
    paths = {suite.methods[e].label: runner.distilled(Cell(0, e, 1, 0))[1] for e in (1, 2)}
    assert (paths["dm-dp"] / "manifest.json").exists() and not (paths["dm-dp"] / "page.html").exists()
    assert (paths["dm"] / "page.html").exists()
    private_key = Cell(0, 1, 1, 0).set_key(suite)
    assert private_key not in (paths["dm-dp"] / "manifest.json").read_text()
    assert Cell(0, 2, 1, 0).set_key(suite) in (paths["dm"] / "manifest.json").read_text()
    written = (paths["dm-dp"] / "tensors.safetensors").read_bytes()
    again, path = Runner(suite, tmp_path / "out").distilled(Cell(0, 1, 1, 0))  # found, not distilled again
    assert path == paths["dm-dp"] and (path / "tensors.safetensors").read_bytes() == written
    assert main(["show", str(paths["dm-dp"]), "--html", str(tmp_path / "page.html")]) != 0
    assert "differentially private" in capsys.readouterr().err and not (tmp_path / "page.html").exists()
