"""DiLM: stage 1 learns the texts, the generation-loss weighting carries the matching loss to the generator
(finite differences in float64), a set is balanced real text, and stage 2 resumes after an interruption."""

from collections import Counter

import numpy as np
import pytest
import torch

from textdistill.errors import ArtifactError
from textdistill.learners import get_learner
from textdistill.methods import dilm as dilm_module
from textdistill.methods import get_method
from textdistill.lm.generator import Generator
from textdistill.methods.dilm import lm_fine_tune
from textdistill.methods.learned_set import fresh_parameters, real_inputs
from textdistill.distilled import DistilledDataset

SMALL = {"max_length": 12, "lm_steps": 4, "lm_batch": 4, "outer_loops": 2, "inner_loops": 2, "learner_steps": 1,
         "learner_batch": 8, "regenerate_every": 1, "syn_batch": 3, "real_batch": 6, "teachers": 1,
         "teacher_size": 4, "pool_factor": 2, "gen_batch": 8}


def test_stage1_lowers_the_lm_loss(tiny_generator, mr_small):
    gen = Generator.pretrained(tiny_generator, ["negative", "positive"], 16)
    texts, _, labels = mr_small.columns("train")
    batch = gen.encode(labels[:8], texts[:8], None)
    with torch.no_grad():
        before = gen.losses(batch).mean().item()
    history = lm_fine_tune(gen, mr_small, steps=30, batch=8, lr=3e-3, progress=False)
    with torch.no_grad():
        after = gen.losses(batch).mean().item()
    assert len(history) == 30 and after < before - 0.5


def test_matching_loss_gradient_reaches_the_generator(tiny_generator, mr_small):
    """d(matching loss)/d(generator) from autograd equals a central finite difference along a random direction."""
    torch.manual_seed(0)
    gen = Generator.pretrained(tiny_generator, ["negative", "positive"], 12)
    gen.model.double()
    method = get_method("dilm", **SMALL)
    learner = get_learner("textcnn-glove")
    model = learner.build(2, seed=0).double().eval()
    params = fresh_parameters(model)
    names = learner.head_parameter_names(model)
    real, real_y, per_class = real_inputs(mr_small, learner)
    texts, _, labels = mr_small.columns("train")
    pool = [([texts[i] for i in idx[:3]], None) for idx in per_class]

    def loss():
        return method.matching_step(gen, learner, model, params, names, real, real_y, per_class, pool,
                                    np.random.default_rng(1))

    weight = gen.model.model.layers[0].mlp.down_proj.weight
    value = loss()
    (grad,) = torch.autograd.grad(value, [weight])
    direction = torch.randn_like(weight)
    eps = 1e-3  # Llama's rotary embeddings run in float32 even in a float64 model: smaller steps meet that noise
    weight.data += eps * direction  # the loss itself needs autograd (it matches gradients): no no_grad here
    up = loss().item()
    weight.data -= 2 * eps * direction
    down = loss().item()
    weight.data += eps * direction
    assert grad.abs().sum() > 0
    assert (grad * direction).sum().item() == pytest.approx((up - down) / (2 * eps), rel=1e-3)


def test_a_generated_set_is_balanced_text(tiny_generator, mr_small):
    ds = get_method("dilm", generator=tiny_generator, **SMALL).distill(mr_small, 3, get_learner("minilm-frozen"))
    assert ds.kind == "text" and Counter(ds.labels.tolist()) == {0: 3, 1: 3}
    assert all(isinstance(t, str) and t.strip() for t in ds.texts)
    assert len(ds.log["matching_loss"]) == SMALL["outer_loops"] * SMALL["inner_loops"]


def test_guided_sampling_follows_the_contrast_with_the_other_class(tiny_generator):
    """With nucleus mass near 0 sampling takes the argmax; with guidance, that of
    scale * (log p(. | class 0) - log p(. | class 1)) + log p(. | class 1), recomputed here step by step."""
    gen = Generator.pretrained(tiny_generator, ["negative", "positive"], 4)
    scale = 30.0
    banned = gen.class_ids + [gen.sep_id, gen.tokenizer.pad_token_id]

    def next_logp(ids):
        with torch.no_grad():
            return torch.log_softmax(gen.model(torch.tensor([ids])).logits[0, -1], -1)

    def greedy(guided):
        tokens = []
        for _ in range(gen.max_length - 1):
            own = next_logp([gen.class_ids[0]] + tokens)
            other = next_logp([gen.class_ids[1]] + tokens)
            scores = scale * (own - other) + other if guided else own
            scores[banned] = -float("inf")  # after guidance, as generation bans them
            token = int(scores.argmax())
            if token == gen.tokenizer.eos_token_id:
                break
            tokens.append(token)
        return gen.tokenizer.decode(tokens, skip_special_tokens=True).strip()

    expected = greedy(guided=True)
    assert expected and expected != greedy(guided=False)  # guidance changes what is written
    texts, _ = gen.sample(0, 2, pairs=False, top_p=1e-6, batch=2, seed=0, guidance=scale, progress=False)
    assert texts == [expected, expected]


def test_filtered_sets_keep_only_examples_the_probe_assigns_to_their_class(tiny_generator, mr_small):
    learner = get_learner("minilm-frozen")
    options = {**SMALL, "outer_loops": 0, "generator": tiny_generator}
    ds = get_method("dilm", filter_labels=True, **options).distill(mr_small, 2, learner)
    probe = dilm_module.label_probe(mr_small, learner)
    assert (probe.predict(learner.sentence_vectors(ds.texts)) == ds.labels.numpy()).all()
    assert Counter(ds.labels.tolist()) == {0: 2, 1: 2} and all(0 < r <= 1 for r in ds.log["probe_accepted"])
    plain = get_method("dilm", **options).distill(mr_small, 2, learner)
    assert "probe_accepted" not in plain.log


def test_a_probe_that_accepts_too_few_examples_is_an_error(tiny_generator, mr_small, monkeypatch):
    from textdistill.errors import DataError

    class Rejecting:
        def predict(self, vectors):
            return np.full(len(vectors), -1)

    monkeypatch.setattr(dilm_module, "label_probe", lambda task, learner: Rejecting())
    with pytest.raises(DataError, match="probe accepted only 0 of"):
        get_method("dilm", generator=tiny_generator, filter_labels=True, **{**SMALL, "outer_loops": 0}).distill(
            mr_small, 2, get_learner("minilm-frozen"))


def test_vanilla_generator_skips_stage2(tiny_generator, mr_small):
    ds = get_method("dilm", generator=tiny_generator, **{**SMALL, "outer_loops": 0}).distill(
        mr_small, 2, get_learner("minilm-frozen"))
    assert ds.log["matching_loss"] == [] and len(ds) == 4


def test_stage2_resumes_after_an_interruption(tiny_generator, mr_small, tmp_path, monkeypatch):
    learner = get_learner("minilm-frozen")
    options = {**SMALL, "outer_loops": 3, "generator": tiny_generator}

    def stage2(cache):
        monkeypatch.setenv("TEXTDISTILL_CACHE", str(tmp_path / cache))
        method = get_method("dilm", **options)
        gen, _ = method.language_model(mr_small)
        return gen, method.gradient_matching(gen, mr_small, learner, seed=0)

    whole, whole_history = stage2("a")
    calls = []
    real_step = dilm_module.DiLM.matching_step

    def failing(self, *args):
        calls.append(1)
        if len(calls) > SMALL["inner_loops"] * 2:  # interrupted during the third outer loop
            raise KeyboardInterrupt
        return real_step(self, *args)

    monkeypatch.setattr(dilm_module.DiLM, "matching_step", failing)
    with pytest.raises(KeyboardInterrupt):
        stage2("b")
    calls.clear()
    monkeypatch.setattr(dilm_module.DiLM, "matching_step", lambda self, *a: (calls.append(1), real_step(self, *a))[1])
    resumed, history = stage2("b")
    assert len(calls) == SMALL["inner_loops"]  # only the unfinished outer loop ran again
    # the same run, up to float32 reduction order on several threads
    assert history == pytest.approx(whole_history, rel=1e-4)
    for (k, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), k


def test_saved_generator_writes_more_sets(tiny_generator, mr_small, tmp_path):
    out = tmp_path / "gen"
    get_method("dilm", generator=tiny_generator, save_generator=str(out), **SMALL).distill(
        mr_small, 2, get_learner("minilm-frozen"))
    marker = DistilledDataset.load(out)  # a `generator` artifact: provenance, no examples
    assert marker.kind == "generator" and marker.method == "dilm" and len(marker) == 0
    with pytest.raises(ArtifactError, match="generate a text set from it first"):
        marker.inputs_for(get_learner("minilm-frozen"))
    again = get_method("dilm", generator=str(out), **{**SMALL, "lm_steps": 0, "outer_loops": 0}).distill(
        mr_small, 4, get_learner("minilm-frozen"), seed=1)
    assert Counter(again.labels.tolist()) == {0: 4, 1: 4}
    texts, pairs = Generator.load(out).sample(1, 5, pairs=False, top_p=0.95, batch=4, seed=0, progress=False)
    assert len(texts) == 5 and pairs is None


def test_bad_options():
    from textdistill.errors import ConfigError

    with pytest.raises(ConfigError, match="syn_batch"):
        get_method("dilm", syn_batch=0)
    with pytest.raises(ConfigError, match="top_p"):
        get_method("dilm", top_p=0)
    with pytest.raises(ConfigError, match=r"guidance \(--guidance\) must be >= 1"):
        get_method("dilm", guidance=0.5)


def test_examples_are_class_token_text_end_and_pairs_are_joined_by_sep(tiny_generator):
    gen = Generator.pretrained(tiny_generator, ["bad", "fine", "good"], 16)
    single = gen.encode([2, 0], ["a good film", "bad"], None)
    ids, mask = single["input_ids"], single["attention_mask"]
    assert ids[:, 0].tolist() == [gen.class_ids[2], gen.class_ids[0]]
    assert ids[0, int(mask[0].sum()) - 1] == gen.tokenizer.eos_token_id
    assert (single["targets"][1, int(mask[1].sum()):] == -100).all()  # padding is not predicted
    pair = gen.encode([1], ["is it raining"], ["it rains"])["input_ids"][0].tolist()
    assert pair.count(gen.sep_id) == 1 and pair[0] == gen.class_ids[1]


def test_stage2_follows_the_reference_batching(tiny_generator, mr_small, monkeypatch):
    """As the reference's stage 2: matching step t reads teacher t mod teachers (one representative set, not
    their union); each synthetic batch holds one member of each of syn_batch k-means clusters of the pool, the
    i-th batch the i-th members; the learner's AdamW runs on across an initialisation's inner loops."""
    options = {**SMALL, "outer_loops": 2, "inner_loops": 3, "teachers": 2, "regenerate_every": 2,
               "generator": tiny_generator}
    method = get_method("dilm", **options)
    learner = get_learner("minilm-frozen")
    teachers = method.teachers(mr_small, learner, seed=0)
    assert len(teachers) == 2 and all(len(t) == 2 and all(len(rows) == 4 for rows in t) for t in teachers)

    pool = [([f"text {i}" for i in range(12)], None)]
    points = np.repeat(np.eye(3) * 10, 4, axis=0)[np.random.default_rng(0).permutation(12)]  # 3 clear clusters
    monkeypatch.setattr(type(learner), "sentence_vectors", lambda self, texts, pairs=None, cache=True: points)
    (batches,) = method.synthetic_batches(pool, learner, seed=0)
    assert len(batches) == 3 * 2
    cluster = points.argmax(1)
    members = {c: list(np.flatnonzero(cluster == c)) for c in range(3)}
    for i, rows in enumerate(batches):
        assert sorted(cluster[rows]) == [0, 1, 2]  # one from each cluster
        assert all(r == members[cluster[r]][i % 4] for r in rows)  # the i-th member of each, in order
    monkeypatch.undo()

    seen, segments = [], []
    real_step, real_train = dilm_module.DiLM.matching_step, dilm_module.train
    monkeypatch.setattr(dilm_module.DiLM, "matching_step",
                        lambda self, *a: (seen.append(a[7]), real_step(self, *a))[1])
    monkeypatch.setattr(dilm_module, "train", lambda *a, **k: (segments.append(
        (k["optimizer"].get("taken", 0), k["lrs"].tolist())), real_train(*a, **k))[1])
    gen, _ = method.language_model(mr_small)
    method.gradient_matching(gen, mr_small, learner, seed=0)
    which = [next(i for i, t in enumerate(teachers) if all(np.array_equal(a, b) for a, b in zip(t, s))) for s in seen]
    assert which == [0, 1, 0, 1, 0, 1]
    schedule = method.config.inner_loops * method.config.learner_steps  # steps 0 and 1 of 3 per initialisation
    assert [taken for taken, _ in segments] == [0, 1, 0, 1]
    recipe = get_learner("minilm-frozen").default_recipe
    first = dilm_module.Recipe(steps=schedule, lr=recipe.lr, warmup=recipe.warmup, schedule=recipe.schedule)
    assert segments[1][1] == pytest.approx([first.lr_at(1)])


def test_a_pair_task_through_dilm_gives_pairs(tiny_generator, tmp_path):
    """A CSV pair task through both stages: the generator learns "text <sep> pair", the set holds a text and a
    second text per example, the learner reads them as pairs."""
    from textdistill.data import get_task

    f = tmp_path / "pairs.csv"
    f.write_text("text,other,label\n" + "".join(f"is it about topic {i},it is about topic {i},{'ab'[i % 2]}\n"
                                                for i in range(16)))
    task = get_task(str(f), pair_col="other", test_size=0.25, seed=0)
    options = {**SMALL, "lm_steps": 150, "lm_lr": 3e-3}  # long enough for the tiny LM to write "<sep>"
    ds = get_method("dilm", generator=tiny_generator, **options).distill(task, 2, get_learner("minilm-frozen"))
    assert ds.kind == "text" and len(ds.texts) == len(ds.text_pairs) == 4
    assert all(isinstance(b, str) for b in ds.text_pairs)
    assert Counter(ds.labels.tolist()) == {0: 2, 1: 2}
    assert ds.inputs_for(get_learner("minilm"))["token_type_ids"].max() == 1  # encoded as pairs


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    """A randomly initialised two-layer GPT-2 with MiniLM's tokenizer and heavy dropout (GPT-2 trains with
    dropout; the Llama generators have none)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from conftest import save_tiny_lm

    return save_tiny_lm(tmp_path_factory, "tiny-gpt2", GPT2LMHeadModel, lambda tokenizer: GPT2Config(
        vocab_size=len(tokenizer), n_embd=16, n_layer=2, n_head=2, n_positions=64, resid_pdrop=0.5, embd_pdrop=0.5,
        attn_pdrop=0.5, bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id))


def test_stage1_with_dropout_is_reproducible_from_its_seed(tiny_gpt2, mr_small):
    """Two stage-1 runs with the same seed give the same weights whatever the process's random state before
    them (its dropout draws come from the seed), and leave that state as they found it; another seed gives other
    weights."""
    def stage1(global_seed, seed=0):
        gen = Generator.pretrained(tiny_gpt2, ["negative", "positive"], 12)
        torch.manual_seed(global_seed)  # whatever ran before in this process
        before = torch.get_rng_state()
        lm_fine_tune(gen, mr_small, steps=3, batch=4, lr=1e-2, seed=seed, progress=False)
        assert torch.equal(torch.get_rng_state(), before)
        return gen.model.state_dict()

    first, second, other = stage1(1), stage1(2), stage1(1, seed=1)
    for k, a in first.items():
        assert torch.equal(a, second[k]), k
    assert any(not torch.equal(a, other[k]) for k, a in first.items())


def test_stage1_ranks_draw_dropout_from_their_own_streams_of_the_seed(tiny_generator, mr_small, monkeypatch):
    """Under torchrun rank 0 draws what one process draws, another rank its own stream (the same every run):
    the draws the generator's forward would make, recorded at each step."""
    gen = Generator.pretrained(tiny_generator, ["negative", "positive"], 12)
    real_losses = gen.losses

    def draws(rank, size, global_seed):
        seen = []
        monkeypatch.setattr(gen, "losses", lambda batch: (seen.append(torch.rand(4)), real_losses(batch))[1])
        monkeypatch.setattr(dilm_module, "world", lambda: (rank, size))
        torch.manual_seed(global_seed)
        lm_fine_tune(gen, mr_small, steps=2, batch=4, lr=1e-3, seed=0, progress=False)
        return torch.stack(seen)

    one = draws(0, 1, global_seed=1)
    assert torch.equal(draws(0, 2, global_seed=2), one)
    other = draws(1, 2, global_seed=3)
    assert torch.equal(draws(1, 2, global_seed=4), other) and not torch.equal(other, one)
