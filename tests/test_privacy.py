"""Differentially private dm: the accountant's noise, the mechanism, and refusals."""

import pytest
import torch

from textdistill.data import get_task
from textdistill.errors import ConfigError
from textdistill.learners import get_learner
from textdistill.methods import get_method
from textdistill.privacy import epsilon, noise_multiplier, noisy_mean


def test_noise_multiplier_meets_the_target_epsilon_of_the_accountant():
    sigma = noise_multiplier(4.0, 1e-5, 0.05, 200)
    assert epsilon(sigma, 1e-5, 0.05, 200) <= 4.0 < epsilon(sigma * 0.99, 1e-5, 0.05, 200)
    assert noise_multiplier(1.0, 1e-5, 0.05, 200) > sigma > noise_multiplier(8.0, 1e-5, 0.05, 200)
    with pytest.raises(ConfigError, match="epsilon > 0"):
        noise_multiplier(0.0, 1e-5, 0.05, 200)


def test_noisy_mean_clips_each_row_and_adds_the_calibrated_noise():
    rows = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    exact = noisy_mean(rows, clip=1.0, sigma=0.0, expected=2.0, gen=torch.Generator().manual_seed(0))
    assert torch.allclose(exact, torch.tensor([(0.6 + 0.3) / 2, (0.8 + 0.4) / 2]))  # the first row clipped to 1
    draws = torch.stack([noisy_mean(rows, 1.0, 2.0, 1.0, torch.Generator().manual_seed(s)) for s in range(2000)])
    assert draws.std(0).mean() == pytest.approx(2.0, rel=0.05)  # sigma x clip / expected


def test_dp_dm_runs_on_real_data_and_records_its_guarantee():
    task = get_task("mr").subset(train_per_class=40, test_size=20, seed=0)
    ds = get_method("dm", iterations=20, init="noise", dp_epsilon=4.0, real_batch=8).distill(
        task, 2, get_learner("minilm-frozen"), seed=0)
    dp = ds.log["dp"]
    assert dp["epsilon"] <= 4.0 and dp["noise_multiplier"] > 0 and dp["sampling_rate"] == 8 / 40 and dp["steps"] == 20
    assert torch.isfinite(ds.tensors["features"]).all()
    plain = get_method("dm", iterations=20, init="noise", real_batch=8).distill(task, 2, get_learner("minilm-frozen"), 0)
    assert "dp" not in plain.log and not torch.equal(plain.tensors["features"], ds.tensors["features"])


@pytest.mark.parametrize("options, what", [({"init": "real"}, "init real"), ({"init": "noise", "labels": "soft"}, "teacher"),
                                           ({"init": "noise", "kernel": "mmd"}, "MMD")])
def test_dp_dm_refuses_what_reads_private_data_outside_the_mechanism(options, what):
    with pytest.raises(ConfigError, match=what):
        get_method("dm", dp_epsilon=1.0, **options)


def test_dp_dc_clips_and_noises_the_real_gradients_and_records_its_guarantee():
    """The mechanism's core: with every row sampled, no clipping and no noise, the private real gradient is the
    plain mean gradient. A DP run records the accountant's epsilon for its outer x inner releases; init real is
    refused."""
    import numpy as np

    from textdistill.methods.dc import private_real_gradient, real_gradient
    from textdistill.methods.learned_set import fresh_parameters, real_inputs

    task = get_task("mr").subset(train_per_class=20, test_size=20, seed=0)
    learner = get_learner("textcnn-glove").for_task(task)
    model = learner.build(2, seed=0).eval()
    params = fresh_parameters(model)
    names = [k for k, v in model.named_parameters() if v.requires_grad]
    real, real_y, per_class = real_inputs(task, learner)
    rows = per_class[0]
    exact = real_gradient(learner, model, params, names, real, real_y, torch.as_tensor(rows), "cpu")
    open_plan = {"sampling_rate": 1.0, "clip": 1e9, "noise_multiplier": 0.0}
    private = private_real_gradient(learner, model, params, names, real, real_y, rows, open_plan,
                                    torch.Generator().manual_seed(0), np.random.default_rng(0), "cpu")
    for a, b in zip(private, exact):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)

    options = {"outer_loops": 2, "inner_loops": 2, "length": 8, "real_batch": 5, "init": "noise"}
    ds = get_method("dc", dp_epsilon=8.0, **options).distill(task, 1, learner, seed=0)
    dp = ds.log["dp"]
    assert dp["epsilon"] <= 8.0 and dp["steps"] == 4 and dp["sampling_rate"] == 5 / 20
    plain = get_method("dc", **options).distill(task, 1, learner, seed=0)
    assert "dp" not in plain.log and not torch.equal(plain.tensors["inputs_embeds"], ds.tensors["inputs_embeds"])
    with pytest.raises(ConfigError, match="init real"):
        get_method("dc", dp_epsilon=1.0)
