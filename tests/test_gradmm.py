"""gradmm: gradient matching in a decoder LM's embedding space, projected onto tokens by ADMM (tiny Llama)."""

import pytest
import torch

from textdistill.errors import ConfigError
from textdistill.learners import get_learner
from textdistill.methods import get_method
from textdistill.methods.matching import class_gradients, gradient_distance
from textdistill.methods.gradmm import admm, matched_names, projection


@pytest.fixture(scope="module")
def tiny_decoder(tiny_generator):
    learner = get_learner(tiny_generator)  # a causal LM folder becomes a decoder classifier
    assert type(learner).__name__ == "DecoderLearner"
    return learner


def test_matching_loss_is_zero_when_the_synthetic_embeddings_are_a_real_batch(tiny_decoder):
    """Synthetic rows are left-padded embeddings; a real batch is right-padded token ids: same gradients."""
    learner = tiny_decoder
    model = learner.build(2, seed=0).eval()
    params = {k: v.detach().requires_grad_(True) for k, v in model.named_parameters()}
    texts = ["a good film", "a dull , overlong and tiresome film"]
    real = learner.encode(texts)
    y = torch.tensor([1, 1])
    for match in ("head", "last", "all"):
        names = [k for k in matched_names(learner, model, match) if "embed_tokens" not in k]
        g_real = class_gradients(learner, model, params, names, real, y, False)
        length = real["input_ids"].shape[1]
        ids = torch.zeros_like(real["input_ids"])
        mask = torch.zeros_like(real["attention_mask"])
        for r, row in enumerate(real["input_ids"]):
            kept = row[real["attention_mask"][r].bool()]
            ids[r, length - len(kept):], mask[r, length - len(kept):] = kept, 1
        embeds = model.get_input_embeddings().weight[ids].detach()
        g_syn = class_gradients(learner, model, params, names, {"inputs_embeds": embeds, "attention_mask": mask}, y,
                                True)
        scale = float(sum((g**2).sum() for g in g_real))
        assert float(gradient_distance(g_syn, g_real, "mse").detach()) < 1e-8 * scale
        # cos counts rows where both gradients are zero as distance 1 (the reference's rule): equal to self-distance
        same = float(gradient_distance(g_real, g_real, "cos"))
        assert float(gradient_distance(g_syn, g_real, "cos").detach()) == pytest.approx(same, abs=1e-4)
        other = class_gradients(learner, model, params, names, {"inputs_embeds": embeds, "attention_mask": mask},
                                torch.tensor([0, 0]), True)
        assert float(gradient_distance(other, g_real, "mse").detach()) > 0.1 * scale  # the other class's gradient differs


def test_projection_gives_valid_ids_the_greedy_lm_without_distance_and_nearest_tokens_with_it(tiny_decoder):
    from textdistill.lm import load_lm

    lm = load_lm(tiny_decoder.name).model
    table = lm.get_input_embeddings().weight.detach()
    banned = torch.tensor(sorted(set(tiny_decoder.tokenizer.all_special_ids)))
    ids = torch.tensor([[0, 0, 2000, 3000, 4000], [5000, 6000, 7000, 8000, 9000]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])  # left-padded, as synthetic rows are
    greedy = projection(lm, table, table[ids], mask, 101, topk=8, distance_weight=0.0, banned=banned)
    assert (greedy[mask == 0] == 0).all() and not torch.isin(greedy[mask == 1], banned).any()
    for row, m in zip(greedy, mask):  # each row: the LM's greedy continuation of the start token, alone
        out = lm.generate(torch.tensor([[101]]), do_sample=False, max_new_tokens=int(m.sum()),
                          min_new_tokens=int(m.sum()), suppress_tokens=banned.tolist(), pad_token_id=0)
        assert row[m.bool()].tolist() == out[0, 1:].tolist()
    nearest = projection(lm, table, table[ids], mask, 101, topk=8, distance_weight=1e4, banned=banned)
    assert torch.equal(nearest, ids * mask)


def test_admm_converges_on_a_convex_toy_problem():
    """min ||x - a||^2 s.t. x >= 0 (projection: clamp): ADMM reaches max(a, 0), and both residuals vanish."""
    a = torch.randn(1, 4, 3, generator=torch.Generator().manual_seed(0))
    z, history = admm(lambda x, it: ((x - a) ** 2).sum(), lambda v: v.clamp(min=0), lambda z: z, torch.zeros_like(a),
                      torch.zeros_like(a), torch.ones(1, 4), iterations=100, embed_steps=20, lr=0.02, rho=1.0,
                      adaptive_rho=False)
    torch.testing.assert_close(z, a.clamp(min=0), atol=1e-2, rtol=0)  # Adam's inexact inner solves: not exact
    assert history[-1]["primal_residual"] < 1e-2 and history[-1]["dual_residual"] < 1e-2
    assert history[-1]["primal_residual"] < history[0]["primal_residual"]


def test_adaptive_rho_moves_rho_and_weighs_the_residuals_by_the_penalty_it_applies():
    """Residual balancing with adaptive rho: rho changes during the run, the run still reaches the solution, and
    rho counts only through the penalty: the same problem laid out as 3x as many one-dimensional positions with
    rho x 3 (the same penalty, rho / positions) runs identically. The dual residual must carry the same
    rho / positions as the penalty for that to hold."""
    a = torch.randn(2, 16, 3, generator=torch.Generator().manual_seed(0))
    runs = []
    for shape, rho in (((2, 16, 3), 1.0), ((2, 48, 1), 3.0)):
        target = a.reshape(shape)
        z, history = admm(lambda x, it: ((x - target) ** 2).sum(), lambda v: v.clamp(min=0), lambda z: z,
                          torch.zeros_like(target), torch.zeros_like(target), torch.ones(shape[:2]), iterations=30,
                          embed_steps=10, lr=0.05, rho=rho, adaptive_rho=True)
        runs.append(([h["rho"] / rho for h in history], z.reshape(a.shape), history))
    (rhos, z, history), (other_rhos, other_z, other) = runs
    assert len(set(rhos)) > 2  # rho moved, more than once
    assert rhos == other_rhos and torch.allclose(z, other_z)
    duals = [h["dual_residual"] for h in other]
    assert [h["dual_residual"] for h in history] == pytest.approx(duals, rel=1e-4, abs=1e-7)
    torch.testing.assert_close(z, a.clamp(min=0), atol=1e-2, rtol=0)


def test_dp_releases_are_the_planned_mechanism_on_the_matched_tensors_with_fresh_noise(tiny_decoder, mr_small,
                                                                                       monkeypatch):
    """Every iteration releases one noisy gradient per class: clipped per example over the matched tensors (not
    the token table the synthetic embeddings never reach), at the plan's noise and expected batch. Two DP runs
    with one seed release different noise; plain runs with one seed write the same text."""
    import textdistill.methods.matching as matching

    with pytest.raises(ConfigError, match="init real copies private examples"):
        get_method("gradmm", dp_epsilon=8)
    model = tiny_decoder.for_task(mr_small).build(2, seed=0)
    table = model.get_input_embeddings().weight
    matched = sum(v.numel() for v in model.parameters() if v.requires_grad and v is not table)
    releases = []
    mechanism = matching.noisy_mean

    def record(rows, clip, sigma, expected, source):
        out = mechanism(rows, clip, sigma, expected, source)
        releases.append((rows.shape[1], clip, sigma, expected, out))
        return out

    monkeypatch.setattr(matching, "noisy_mean", record)
    options = {"init": "noise", "iterations": 2, "embed_steps": 1, "length": 4, "real_batch": 3, "match": "all"}
    runs = []
    for _ in range(2):
        releases.clear()
        ds = get_method("gradmm", dp_epsilon=8, **options).distill(mr_small, 1, tiny_decoder, seed=0)
        plan = ds.provenance.dp
        assert plan["sampling_rate"] == 2 * 3 / 24 and plan["expected_batch"] == pytest.approx(3) and plan["steps"] == 2
        planned = (matched, plan["clip"], plan["noise_multiplier"], plan["expected_batch"])
        assert [r[:4] for r in releases] == [planned] * 4  # 2 iterations x 2 classes
        runs.append(torch.cat([r[4] for r in releases]))
        assert "fingerprint" not in ds.task and ds.source_indices is None
    assert not torch.allclose(runs[0], runs[1])
    plain = [get_method("gradmm", **options).distill(mr_small, 1, tiny_decoder, seed=0) for _ in range(2)]
    assert plain[0].texts == plain[1].texts and plain[0].log["admm"] == plain[1].log["admm"]


def test_a_dp_run_reports_its_epsilon_and_writes_text(tiny_decoder, mr_small, tmp_path, capsys):
    from textdistill.cli import main

    ds = get_method("gradmm", dp_epsilon=8, init="noise", iterations=2, embed_steps=1, length=6,
                    real_batch=4).distill(mr_small, 2, tiny_decoder, seed=0)
    assert ds.kind == "text" and len(ds.texts) == 4 and all(ds.texts) and ds.provenance.dp["epsilon"] <= 8
    assert ds.log["admm"]["rho"][1] != ds.log["admm"]["rho"][0]  # adaptive rho (the default) moves it
    ds.save(tmp_path / "set")
    main(["show", str(tmp_path / "set")])
    assert f"({ds.provenance.dp['epsilon']:.2f}, 1e-05)-DP over 2 releases" in capsys.readouterr().out


def test_an_encoder_learner_is_refused(mr_small):
    with pytest.raises(ConfigError, match="decoder learner"):
        get_method("gradmm").distill(mr_small, 1, get_learner("minilm"))


def test_perplexity_is_lower_for_text_the_lm_wrote(tiny_decoder):
    from textdistill.lm import load_lm

    lm = load_lm(tiny_decoder.name)
    ids = lm.model.generate(torch.tensor([[101]]), do_sample=False, max_new_tokens=8, min_new_tokens=8, pad_token_id=0)
    written = lm.tokenizer.decode(ids[0, 1:], skip_special_tokens=True)
    assert lm.perplexity([written]) < lm.perplexity(["a warm , funny and moving film about two brothers"])


def test_without_a_learner_gradmm_works_with_its_decoder(monkeypatch, tmp_path):
    """`textdistill distill --method gradmm` (no --learner) and td.distill(task, "gradmm") use smollm2-135m."""
    import textdistill as td
    from textdistill.cli import main
    from textdistill.methods.gradmm import Gradmm

    seen = []

    def record(self, task, dpc, learner, seed=0):  # what run() is given: the default learner
        seen.append(learner.name)
        raise ConfigError("stop here")

    monkeypatch.setattr(Gradmm, "run", record)
    f = tmp_path / "d.csv"
    f.write_text("text,label\n" + "".join(f"sentence {i},{'ab'[i % 2]}\n" for i in range(8)))
    assert main(["distill", "--task", str(f), "--method", "gradmm", "--dpc", "1", "--out", str(tmp_path / "o")]) == 2
    with pytest.raises(ConfigError, match="stop here"):
        td.distill(str(f), "gradmm", dpc=1)
    assert seen == ["smollm2-135m", "smollm2-135m"]
