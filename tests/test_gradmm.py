"""gradmm: gradient matching in a decoder LM's embedding space, projected onto tokens by ADMM (tiny Llama)."""

import pytest
import torch

from textdistill.errors import ConfigError
from textdistill.learners import get_learner
from textdistill.methods import get_method
from textdistill.methods.matching import class_gradients, gradient_distance
from textdistill.methods.gradmm import (admm, banned_tokens, label_word_residual, last_hidden, matched_names,
                                       nearest_topk_projection, output_distance, output_gradient, output_layer,
                                       projection, tensor_cosine_distance)


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


def tiny_causal_lm(kind: str) -> torch.nn.Module:
    """A random 2-layer causal LM over 40 tokens, built here: Phi (its output layer has a bias) or Llama with the
    output layer tied to the input table (as SmolLM2). Eager attention, so the reference's double backward runs."""
    from transformers import LlamaConfig, LlamaForCausalLM, PhiConfig, PhiForCausalLM

    torch.manual_seed(0)
    sizes = {"vocab_size": 40, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
             "num_attention_heads": 2, "max_position_embeddings": 32}
    if kind == "phi":
        return PhiForCausalLM._from_config(PhiConfig(**sizes), attn_implementation="eager").eval()
    config = LlamaConfig(**sizes, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM._from_config(config, attn_implementation="eager").eval()


@pytest.mark.parametrize("kind", ["phi", "llama"])
def test_the_label_word_gradient_and_its_distances_equal_the_references(kind):
    """The LM's next-token loss on a label word read after synthetic embeddings and the prompt: its output-layer
    gradient equals autograd's on the model's own logits (the reference's compute_grads_lm) and a hand-written
    sum of (softmax - one-hot) x hidden; the distances computed from the factors equal those of the dense
    gradients; and the embeddings' gradient of the distance equals the reference's double backward."""
    lm = tiny_causal_lm(kind)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, 16, generator=gen).requires_grad_(True)
    prompt = lm.get_input_embeddings().weight.detach()[torch.tensor([7, 8])]
    embeds = torch.cat([x, prompt.expand(3, -1, -1)], 1)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1] * 7, [0, 1, 1, 1, 1, 1, 1]])  # left-padded rows
    y = torch.tensor([4, 9, 4])
    layer = output_layer(lm)
    assert len(layer) == (2 if kind == "phi" else 1)

    h = last_hidden(lm, embeds, mask)
    residual = label_word_residual(layer, h, y)
    ours = output_gradient(layer, residual, h)

    head = lm.get_output_embeddings()
    seen = []
    hook = head.register_forward_hook(lambda module, args, out: seen.append(args[0][:, -1]))
    logits = lm(inputs_embeds=embeds, attention_mask=mask).logits[:, -1]
    hook.remove()
    loss = torch.nn.functional.cross_entropy(logits, y)
    tensors = [head.weight] + ([head.bias] if head.bias is not None else [])
    reference = torch.autograd.grad(loss, tensors, create_graph=True)
    by_hand = torch.zeros(40, 16)
    for i in range(3):
        p = logits[i].softmax(-1).detach().clone()
        p[y[i]] -= 1
        by_hand += torch.outer(p, seen[0][i].detach()) / 3
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours[0].detach(), by_hand, atol=1e-6, rtol=1e-5)

    real = [torch.randn(g.shape, generator=gen) for g in reference]
    dense = [g.detach() for g in reference]
    a = residual / 3
    by_reference = sum(1 - (g * r).sum() / (g.norm() * r.norm()) for g, r in zip(dense, real)) / len(real)
    torch.testing.assert_close(output_distance(a, h, real, "tensor-cos"), by_reference)
    torch.testing.assert_close(tensor_cosine_distance(dense, real), by_reference)
    torch.testing.assert_close(output_distance(a, h, real, "cos"), gradient_distance(dense, real, "cos") / 40)
    torch.testing.assert_close(output_distance(a, h, real, "mse"),
                               gradient_distance(dense, real, "mse") / sum((r**2).sum() for r in real))
    ours_grad = torch.autograd.grad(output_distance(a, h, real, "tensor-cos"), x, retain_graph=True)[0]
    reference_grad = torch.autograd.grad(tensor_cosine_distance(list(reference), real), x)[0]
    torch.testing.assert_close(ours_grad, reference_grad, atol=1e-6, rtol=1e-4)
    assert ours_grad[0, :2].abs().max() == 0 and ours_grad[0, 2:].abs().max() > 0  # padding reads nothing


def test_the_nearest_topk_projection_takes_the_lms_argmax_among_the_k_nearest_tokens(tiny_decoder):
    """Each counted position: the k allowed tokens of highest cosine to its target, and among them the one the LM
    finds likeliest after the row's own context and the tokens chosen before (checked one full forward pass per
    position, without padding or cache). Rows have contexts of their own lengths and left padding."""
    import torch.nn.functional as F

    from textdistill.lm import load_lm

    lm = load_lm(tiny_decoder.name).model
    table = lm.get_input_embeddings().weight.detach()
    banned = banned_tokens(tiny_decoder.tokenizer, table.shape[0], "words")
    target = torch.randn(3, 5, table.shape[1], generator=torch.Generator().manual_seed(0)) * table.std()
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    contexts = [[101], [101, 2023, 3185, 2001], [101, 2307]]
    for k in (1, 5, 50):
        ids = nearest_topk_projection(lm, table, target, mask, contexts, k, banned)
        assert (ids[mask == 0] == 0).all() and not torch.isin(ids[mask == 1], banned).any()
        for r in range(3):
            chosen = list(contexts[r])
            for j in torch.nonzero(mask[r]).flatten().tolist():
                cos = F.normalize(target[r, j], dim=-1) @ F.normalize(table, dim=-1).T
                cos[banned] = -torch.inf
                near = cos.topk(k).indices
                with torch.no_grad():
                    logits = lm(input_ids=torch.tensor([chosen])).logits[0, -1]
                assert int(ids[r, j]) == int(near[logits[near].argmax()])
                chosen.append(int(ids[r, j]))
    nearest = nearest_topk_projection(lm, table, target, mask, contexts, 1, banned)
    cos = F.normalize(target, dim=-1) @ F.normalize(table, dim=-1).T
    cos[..., banned] = -torch.inf
    assert torch.equal(nearest, cos.argmax(-1) * mask)  # k = 1: the nearest token, whatever the LM says


def test_the_words_vocabulary_keeps_word_tokens_only(tiny_decoder):
    tok = tiny_decoder.tokenizer
    banned = set(banned_tokens(tok, len(tok), "words").tolist())
    allowed_words = [tok.convert_tokens_to_ids(t) for t in ("great", "bad", "movie")]
    refused = [tok.convert_tokens_to_ids(t) for t in (",", "##ing", "[CLS]", "1", "-", "$")]
    assert not banned & set(allowed_words) and set(refused) <= banned
    assert set(banned_tokens(tok, len(tok), "all").tolist()) == set(tok.all_special_ids)
    assert set(banned_tokens(tok, len(tok) + 3, "all").tolist()) == set(tok.all_special_ids) | {len(tok) + i
                                                                                                for i in range(3)}


def test_the_reference_admm_runs_each_group_as_if_alone_and_keeps_the_best_iterate():
    """penalty sum, per-run gradient clipping, keep_best and project_first: two runs in one call move exactly as
    each would alone; clipping changes the path; the projection of the best iterate is returned, not the last."""
    a = torch.randn(4, 3, 2, generator=torch.Generator().manual_seed(0))
    runs = torch.tensor([0, 0, 1, 1])

    def toy(rows, worse_after=None):
        def objective(x, it):
            goal = a[rows] if worse_after is None or it < worse_after else -a[rows] - 3
            per_row = ((x - goal) ** 2).flatten(1).sum(1)
            return torch.stack([per_row[runs[rows] == r].sum() for r in runs[rows].unique()])
        return objective

    options = {"iterations": 6, "embed_steps": 5, "lr": 0.05, "rho": 0.5, "adaptive_rho": False, "penalty": "sum",
               "project_first": True, "keep_best": True}
    start = torch.zeros_like(a)
    clamp = lambda v: v.clamp(min=0)  # noqa: E731
    for clip in (0.0, 0.3):
        joint, _ = admm(toy(slice(None)), clamp, lambda z: z, start, start, torch.ones(4, 3), runs=runs,
                        grad_clip=clip, **options)
        alone = [admm(toy(rows), clamp, lambda z: z, start[rows], start[rows], torch.ones(2, 3), grad_clip=clip,
                      **options)[0] for rows in (slice(0, 2), slice(2, 4))]
        torch.testing.assert_close(joint, torch.cat(alone), atol=1e-6, rtol=0)
    unclipped, _ = admm(toy(slice(None)), clamp, lambda z: z, start, start, torch.ones(4, 3), runs=runs, **options)
    clipped, _ = admm(toy(slice(None)), clamp, lambda z: z, start, start, torch.ones(4, 3), runs=runs, grad_clip=0.3,
                      **options)
    assert not torch.allclose(unclipped, clipped, atol=1e-3)
    # the goal jumps away (and the loss up) after 3 iterations: the best iterate is from before the jump
    best, _ = admm(toy(slice(None), worse_after=3), clamp, lambda z: z, start, start, torch.ones(4, 3), runs=runs,
                   **options)
    last, _ = admm(toy(slice(None), worse_after=3), clamp, lambda z: z, start, start, torch.ones(4, 3), runs=runs,
                   **{**options, "keep_best": False})
    assert ((best - a.clamp(min=0)).abs().mean() < (last - a.clamp(min=0)).abs().mean())
    # the reference's iteration converges; its best iterate (by loss plus penalty, the dual inside) may be an
    # early, infeasible one, so convergence is checked on the last
    converged, history = admm(toy(slice(None)), clamp, lambda z: z, start, start, torch.ones(4, 3), runs=runs,
                              **{**options, "iterations": 60, "embed_steps": 20, "lr": 0.02, "keep_best": False})
    torch.testing.assert_close(converged, a.clamp(min=0), atol=2e-2, rtol=0)
    assert history[-1]["primal_residual"] < 2e-2


@pytest.mark.parametrize("objective", ["label-words", "classifier"])
def test_the_reference_option_set_writes_word_texts(objective, tiny_decoder, mr_small, tmp_path):
    """The reference's option set end to end on a tiny LM: noise start (best of 2 draws per run), label words,
    the nearest-topk projection over word tokens after a class-conditional prefix, the summed penalty, clipping,
    the best iterate; and the same ADMM with today's classifier objective. The set is text made of allowed
    tokens, reproducible from its seed."""
    from textdistill.distilled import DistilledDataset

    options = {"objective": objective, "label_words": "bad,great", "init": "noise", "init_candidates": 2,
               "noise_norm": 1.4, "length": 0, "iterations": 2, "embed_steps": 2, "lr": 0.008, "rho": 1.0,
               "adaptive_rho": False, "penalty": "sum", "grad_clip": 1.0, "project_first": True, "keep_best": True,
               "projection": "nearest-topk", "topk": 8, "vocabulary": "words", "prefix": "a {label} review :",
               "distance": "tensor-cos", "real_examples": 10, "real_batch": 10, "group_size": 1}
    if objective == "classifier":  # a double backward per run and step: fewer of them
        options.update(iterations=2, embed_steps=1, group_size=2)
    ds = get_method("gradmm", **options).distill(mr_small, 2, tiny_decoder, seed=0)
    assert ds.kind == "text" and len(ds.texts) == 4 and all(ds.texts) and ds.labels.tolist() == [0, 0, 1, 1]
    assert ds.log.get("label_words") == (["bad", "great"] if objective == "label-words" else None)
    assert len(ds.log["admm"]["objective"]) == 2
    assert 0 <= ds.log["admm"]["text_matching_loss"] <= 2 and ds.log["admm"]["rho"] == [1.0, 1.0]
    tok = tiny_decoder.tokenizer
    banned = set(banned_tokens(tok, len(tok), "words").tolist())
    assert all(not banned & set(tok(t, add_special_tokens=False)["input_ids"]) for t in ds.texts)
    ds.save(tmp_path / "set")
    assert DistilledDataset.load(tmp_path / "set").texts == ds.texts
    if objective == "classifier":
        return
    again = get_method("gradmm", **options).distill(mr_small, 2, tiny_decoder, seed=0)
    assert again.texts == ds.texts and again.log["admm"] == ds.log["admm"]


def test_label_words_are_checked_and_the_paper_config_loads(mr_small, tiny_decoder):
    from pathlib import Path

    import yaml

    from textdistill.methods.gradmm import GradmmConfig

    with pytest.raises(ConfigError, match="give 2 non-empty words"):
        get_method("gradmm", objective="label-words", label_words="bad,fine,great").distill(mr_small, 1, tiny_decoder)
    with pytest.raises(ConfigError, match="its own first token"):
        get_method("gradmm", objective="label-words", label_words="great,great").distill(mr_small, 1, tiny_decoder)
    with pytest.raises(ConfigError, match="only the classifier objective"):
        get_method("gradmm", objective="label-words", dp_epsilon=4, init="noise")
    with pytest.raises(ConfigError, match="objective must be one of classifier, label-words"):
        get_method("gradmm", objective="labels")
    paper = yaml.safe_load((Path(__file__).parent.parent / "configs" / "gradmm-paper.yaml").read_text())
    cfg = GradmmConfig.from_dict(paper)
    assert (cfg.objective, cfg.prompt, cfg.label_words, cfg.topk, cfg.iterations, cfg.embed_steps, cfg.lr) == (
        "label-words", " It was ", "bad,great", 200, 30, 50, 0.008)
    assert "{label}" in cfg.prefix and cfg.prefix.endswith("{label}\n. Answer:")
