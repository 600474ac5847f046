"""Reliability: nothing the user owns is lost, checks come before work, crafted artifacts stay inside."""

import json
import os
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from textdistill import cache
from textdistill.bench import Runner, collect, parse_suite, plan, run_suite
from textdistill.cli import main
from textdistill.errors import ArtifactError, ConfigError
from textdistill.distilled import DistilledDataset, check_output


def text_set(n=2):
    return DistilledDataset(kind="text", texts=[f"t{i}" for i in range(n)], labels=torch.tensor([i % 2 for i in range(n)]),
                            label_names=["negative", "positive"], method="test",
                            task={"name": "mr", "fingerprint": "x", "origin": {"name": "mr"}})


def embedding_set(learner_id):
    return DistilledDataset(kind="token-embeddings", labels=torch.tensor([0, 1]), label_names=["a", "b"],
                            bound_to={"id": learner_id}, method="test",
                            tensors={"inputs_embeds": torch.randn(2, 3, 50), "attention_mask": torch.ones(2, 3)})


def user_folder(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.txt").write_text("years of work")
    return folder


# -- 1. --overwrite replaces a distilled set or an empty folder, nothing else ----------------------------------
def test_overwrite_never_deletes_a_folder_that_is_not_a_set(tmp_path):
    folder = user_folder(tmp_path)
    with pytest.raises(ArtifactError, match=f"{folder} is not a distilled set.*--overwrite"):
        text_set().save(folder, overwrite=True)
    assert (folder / "thesis.txt").read_text() == "years of work"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError, match="exists and is not a directory"):
        text_set().save(tmp_path / "file", overwrite=True)
    (tmp_path / "empty").mkdir()
    text_set().save(tmp_path / "empty", overwrite=True)
    text_set(4).save(tmp_path / "empty", overwrite=True)  # a set is replaced
    assert len(DistilledDataset.load(tmp_path / "empty")) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file", "mine"]  # nothing left aside


def test_distill_and_decode_overwrite_refuse_a_user_folder(tmp_path, capsys):
    folder = user_folder(tmp_path)
    assert main(["distill", "--task", "mr", "--method", "random", "--dpc", "1", "--out", str(folder),
                 "--overwrite"]) == 2
    assert f"{folder} is not a distilled set" in capsys.readouterr().err
    text_set().save(tmp_path / "set")
    assert main(["decode", str(tmp_path / "set"), "--out", str(folder), "--overwrite"]) == 2
    assert "--overwrite only replaces" in capsys.readouterr().err
    assert (folder / "thesis.txt").read_text() == "years of work"


@pytest.mark.parametrize("label", ["x/../../../escape", "..", ".hidden", "/abs", "a\\b", ""])
def test_suite_labels_are_plain_path_components(label):
    raw = {"tasks": ["mr"], "learners": ["minilm-frozen"], "dpc": [1],
           "methods": [{"method": "random"}, {"method": "kmeans", "label": label}]}
    with pytest.raises(ConfigError, match=r"mysuite: methods\[1\]: label .* must be a plain name"):
        parse_suite(raw, "mysuite")
    with pytest.raises(ConfigError, match="task name '.hidden' must be a plain name"):
        parse_suite({**raw, "methods": ["random"], "tasks": [".hidden.csv"]}, "mysuite")


# -- 2. --out is checked before any work -----------------------------------------------------------------------
def test_out_is_checked_before_distilling(tmp_path, capsys, monkeypatch):
    def no_work(*_):
        raise AssertionError("the task was loaded before --out was checked")

    monkeypatch.setattr("textdistill.cli._load_task", no_work)
    base = ["distill", "--task", "mr", "--method", "random", "--dpc", "1", "--out"]
    (tmp_path / "old").mkdir()
    assert main([*base, str(tmp_path / "old")]) == 2
    assert "exists; choose another --out or pass --overwrite" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main([*base, str(tmp_path / "file"), "--overwrite"]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main([*base, str(tmp_path / "file" / "sub")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    if Path("/proc/self").exists():
        assert main([*base, "/proc/x"]) == 2
        assert "cannot create /proc/x: /proc is not writable" in capsys.readouterr().err
        with pytest.raises(ArtifactError, match="not writable"):
            text_set().save("/proc/x/y")
    check_output(tmp_path / "new" / "deeper")  # a missing parent is created later
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".textdistill-probe-*"))


# -- 3. damaged inputs: one-line errors, damaged cells recomputed -------------------------------------------------
@pytest.mark.parametrize("change, field", [
    ({"label_names": "ab"}, "label_names"), ({"label_names": [1, 2]}, "label_names"),
    ({"label_names": ["only"]}, "label_names has 1 classes"), ({"kind": 5}, "kind"), ({"kind": "images"}, "kind"),
    ({"size": "2"}, "size"), ({"size": 3}, "manifest size 3"), ({"seed": "x"}, "seed"), ({"bound_to": "x"}, "bound_to"),
    ({"made_with": 3}, "made_with"),
    ({"task": []}, "task"), ({"recipe": [1]}, "recipe"), ({"config": None}, "config"),
    ({"source_indices": ["a"]}, "source_indices"), ({"kind": "token-embeddings", "bound_to": {"id": "minilm"}},
                                                    "needs tensors"),
])
def test_a_mistyped_manifest_field_is_named(tmp_path, change, field):
    text_set().save(tmp_path / "s")
    m = tmp_path / "s" / "manifest.json"
    m.write_text(json.dumps({**json.loads(m.read_text()), **change}))
    with pytest.raises(ArtifactError, match=field) as e:
        DistilledDataset.load(tmp_path / "s")
    assert str(tmp_path / "s") in str(e.value)


def test_missing_manifest_field_and_bad_rows_are_named(tmp_path):
    text_set().save(tmp_path / "s")
    m = tmp_path / "s" / "manifest.json"
    good = json.loads(m.read_text())
    m.write_text(json.dumps({k: v for k, v in good.items() if k != "label_names"}))
    with pytest.raises(ArtifactError, match="manifest.json: missing field 'label_names'"):
        DistilledDataset.load(tmp_path / "s")
    m.write_text(json.dumps(good))
    (tmp_path / "s" / "data.jsonl").write_text('{"text": "a", "label": "negative"}\n[1]\n')
    with pytest.raises(ArtifactError, match="data.jsonl:2: expected a JSON object"):
        DistilledDataset.load(tmp_path / "s")
    (tmp_path / "s" / "data.jsonl").write_text('{"text": "a"}\n{"text": 3}\n')
    with pytest.raises(ArtifactError, match="data.jsonl:2: 'text' must be a string"):
        DistilledDataset.load(tmp_path / "s")
    assert main(["show", str(tmp_path / "s")]) == 2


def small_suite():
    return parse_suite({"tasks": ["mr"], "learners": ["minilm-frozen"], "methods": ["random"], "dpc": [1]}, "tiny")


def test_a_truncated_cell_is_recomputed_with_a_warning(tmp_path, capsys, monkeypatch):
    suite = small_suite()
    done = []
    monkeypatch.setattr(Runner, "run_cell", lambda self, cell: done.append(cell) or [])
    first = plan(suite)[0]
    cell_file = tmp_path / "cells" / f"{first.key(suite)}.json"
    cell_file.parent.mkdir(parents=True)
    cell_file.write_text('{"key": "abc", "records": [')  # killed mid-copy
    collect(suite, tmp_path)  # warns, does not fail
    assert f"warning: {cell_file}: unreadable cell" in capsys.readouterr().err
    run_suite(suite, tmp_path, progress=False)
    assert first in done and "it is run again" in capsys.readouterr().err
    assert json.loads(cell_file.read_text())["records"] == []
    done.clear()
    assert not run_suite(suite, tmp_path, progress=False)["missing"] and not done


# -- 4. a manifest never makes us read a file or load a model from a path it names ---------------------------
def test_task_origin_never_reads_a_file_the_manifest_names(tmp_path, capsys):
    secret = tmp_path / "secrets.txt"
    secret.write_text("SECRET_TOKEN=hunter2\n")
    ds = text_set()
    ds.task = {"name": "secrets", "fingerprint": "x", "origin": {"name": str(secret)}}
    ds.save(tmp_path / "s")
    assert main(["evaluate", str(tmp_path / "s"), "--learner", "minilm-frozen", "--seeds", "1"]) == 2
    err = capsys.readouterr().err
    assert "hunter2" not in err and "SECRET" not in err and "pass it again with --task" in err


def test_a_learner_path_in_a_manifest_is_never_loaded(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    for lid in [str(model), "./model", "../x", "~/m", "a/b/c", "a\\b"]:
        embedding_set(lid).save(tmp_path / "s", overwrite=True)
        with pytest.raises(ArtifactError, match="a local path"):
            DistilledDataset.load(tmp_path / "s").bound_learner()
    assert main(["show", str(tmp_path / "s")]) == 2
    assert "a model is never loaded from a path a manifest names" in capsys.readouterr().err
    assert main(["decode", str(tmp_path / "s"), "--out", str(tmp_path / "t")]) == 2
    for lid in ["textcnn-glove", "bert-base-uncased", "org/name"]:
        assert embedding_set(lid).bound_learner() == lid


# -- 5. writers racing on one --out ----------------------------------------------------------------------------
def test_concurrent_overwrites_of_one_path_never_fail(tmp_path):
    target = tmp_path / "out"

    def save(i):
        text_set(2 + 2 * (i % 3)).save(target, overwrite=True)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(save, range(40)))
    assert len(DistilledDataset.load(target)) in (2, 4, 6)  # one whole set
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp or old folder left


# -- 6. the user's umask ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_files_and_folders_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    cache.umask.cache_clear()
    try:
        text_set().save(tmp_path / "s")
        cache.atomic_write(tmp_path / "c.json", lambda p: p.write_text("{}"))
    finally:
        os.umask(old)
        cache.umask.cache_clear()
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "s") == 0o777 & ~mask
    assert mode(tmp_path / "c.json") == 0o666 & ~mask
    assert {mode(p) for p in (tmp_path / "s").iterdir()} == {0o666 & ~mask}


def test_report_plots_stay_inside_the_result_folder(tmp_path):
    from textdistill.report import write_report

    task = "../../escape"  # a crafted results.json
    records = [{"task": task, "learner": learner, "method": method, "dpc": dpc, "set_seed": 0,
                "train_set": {"size": 2}, "runs": [{"seed": 0, "accuracy": 0.6, "seconds": 1.0}], "steps": {}}
               for learner in ("minilm", "textcnn-glove") for method, dpc in (("random", 1), ("full", None))]
    out = tmp_path / "a" / "b"
    out.mkdir(parents=True)
    (out / "results.json").write_text(json.dumps({"suite": {"name": "x"}, "environments": [], "records": records,
                                                  "missing": []}))
    write_report(out)
    assert sorted(p.name for p in tmp_path.rglob("*.png") if out not in p.parents) == []


def test_dilm_checks_save_generator_before_training(tmp_path, mr_small, monkeypatch):
    from textdistill.learners import get_learner
    from textdistill.methods import get_method
    from textdistill.methods.dilm import DiLM

    def no_work(*_):
        raise AssertionError("trained before --save-generator was checked")

    monkeypatch.setattr(DiLM, "language_model", no_work)
    folder = user_folder(tmp_path)
    with pytest.raises(ArtifactError, match="not a distilled set"):
        get_method("dilm", save_generator=str(folder)).distill(mr_small, 1, get_learner("minilm-frozen"))
    assert (folder / "thesis.txt").exists()


def test_a_diverging_evaluation_run_is_recorded_as_failed_and_the_rest_go_on(mr_small, monkeypatch):
    from textdistill import evaluation as evaluate_module
    from textdistill.errors import TrainingDiverged
    from textdistill.evaluation import evaluate
    from textdistill.seeds import eval_seed

    # A learning rate that overflows the head's weights: every run diverges, and evaluate still returns.
    (r,) = evaluate(mr_small, None, ["minilm-frozen"], seeds=2, recipe={"lr": 1e38, "steps": 5}, cache=False,
                    progress=False)
    assert r.accuracy_mean is None and r.failed_runs == 2 and r.summary() == "failed (2 of 2 runs)"
    assert all(x["accuracy"] is None and "loss became nan" in x["failed"] for x in r.runs)

    # One run of three diverges: the mean and std are over the two that finished.
    real = evaluate_module.train

    def diverges_for_seed_1(*args, seed, **kwargs):
        if seed == eval_seed(1):
            raise TrainingDiverged("training loss became nan at step 0")
        return real(*args, seed=seed, **kwargs)

    monkeypatch.setattr(evaluate_module, "train", diverges_for_seed_1)
    (r,) = evaluate(mr_small, None, ["minilm-frozen"], seeds=3, recipe={"steps": 5}, cache=False, progress=False)
    finished = [x["accuracy"] for x in r.runs if x["accuracy"] is not None]
    assert r.failed_runs == 1 and len(finished) == 2 and r.runs[1]["failed"]
    assert r.accuracy_mean == pytest.approx(sum(finished) / 2) and "(1 of 3 runs failed)" in r.summary()


def test_cache_keys_change_with_the_package_version_and_schema(monkeypatch):
    from textdistill import cache

    key = cache.key_of("evals", 1)
    monkeypatch.setattr(cache, "__version__", "99.0")
    assert cache.key_of("evals", 1) != key
    monkeypatch.undo()
    monkeypatch.setattr(cache, "SCHEMA", cache.SCHEMA + 1)
    assert cache.key_of("evals", 1) != key


def test_cache_info_and_clear(tmp_path, monkeypatch, capsys):
    from textdistill.cli import main

    monkeypatch.setenv("TEXTDISTILL_CACHE", str(tmp_path))
    for kind, name in (("evals", "a.json"), ("evals", "b.json"), ("vectors", "c.npy"), ("models", "m/x.bin")):
        (tmp_path / kind / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / kind / name).write_bytes(b"0" * 1024)
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"evals\s+2 entries", out) and re.search(r"models\s+1 entries", out)
    assert main(["cache", "clear", "--kind", "vectors"]) == 0
    assert not (tmp_path / "vectors").exists() and (tmp_path / "evals").exists()
    assert main(["cache", "clear"]) == 0  # computed results go; the converted models stay
    assert not (tmp_path / "evals").exists() and (tmp_path / "models" / "m" / "x.bin").exists()
    assert main(["cache", "clear", "--kind", "everything"]) == 2
    assert "unknown cache kind 'everything'" in capsys.readouterr().err


def test_evaluation_cache_is_reused_only_when_nothing_changed(tmp_path, monkeypatch):
    from textdistill.data import get_task
    from textdistill.evaluation import evaluate
    from textdistill.learners import get_learner
    from textdistill.methods import get_method
    from textdistill.resources import cache_dir

    task = get_task("mr").subset(train_per_class=10, test_size=20, seed=0)  # loaded before the cache moves
    (tmp_path / "downloads").symlink_to(cache_dir() / "downloads")
    monkeypatch.setenv("TEXTDISTILL_CACHE", str(tmp_path))
    learner = get_learner("minilm-frozen")
    ds = get_method("random").distill(task, 2, learner, seed=0)
    runs = lambda: len(list((tmp_path / "evals").glob("*.json")))  # noqa: E731

    def run(t=task, s=ds, learners=("minilm-frozen",), recipe=None):
        return evaluate(t, s, list(learners), seeds=2, recipe=recipe, cache=True, progress=False)[0]

    first = run()
    assert runs() == 2
    assert run().runs == first.runs and runs() == 2  # the same everything: read back, not trained again
    run(recipe={"steps": 7})
    assert runs() == 4  # a new recipe
    run(s=get_method("random").distill(task, 2, learner, seed=1))
    assert runs() == 6  # a new set
    run(learners=("textcnn-glove",))
    assert runs() == 8  # a new learner
    run(t=get_task("mr").subset(train_per_class=10, test_size=21, seed=0))
    assert runs() == 10  # a new task (one more test sentence)
    evaluate(task, ds, ["minilm-frozen"], seeds=2, progress=False)  # the library default: no cache
    assert runs() == 10
