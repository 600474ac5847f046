import json
from pathlib import Path

import pytest
import yaml

from textdistill.bench import Runner, collect, load_suite, parse_suite, plan, run_suite
from textdistill.cli import main
from textdistill.errors import ConfigError, DataError, ResourceMissing
from textdistill.report import compare, write_report

SUITES = Path(__file__).parent.parent / "benchmarks"
SLICE = {"train_per_class": 12, "test_size": 60, "seed": 0}


def tiny_smoke(**changes):
    """benchmarks/smoke.yaml on a small slice of MR with fewer seeds (the CI run of the smoke suite)."""
    raw = yaml.safe_load((SUITES / "smoke.yaml").read_text())
    raw.update({"tasks": [{"name": "mr", "subset": SLICE}], "dpc": [2], "sets": 1, "seeds": 2, **changes})
    return parse_suite(raw, "smoke")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache for evaluations and vectors that still sees the downloaded MR sdist."""
    from textdistill.resources import cache_dir

    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "downloads").symlink_to(cache_dir() / "downloads")
    monkeypatch.setenv("TEXTDISTILL_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("path", sorted(SUITES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_suite_in_benchmarks_parses_and_plans_its_whole_grid(path):
    """Every suite parses and plans; the cells of tasks that load here have distinct keys. A task whose data
    folder is absent (../shared/data on a user's clone) only skips its own cells, and says so."""
    suite = load_suite(path)
    cells = plan(suite)
    bars = suite.bar is not None and suite.bar not in suite.learners  # the random sets with the SetFit bar
    assert len(cells) == len(suite.tasks) * (1 + (len(suite.methods) + bars) * len(suite.dpc) * suite.sets)
    keys, loaded, absent = set(), 0, set()
    for cell in cells:
        try:  # keys hold the task's content and the learners' recipes: only suites that load offline
            keys.add(cell.key(suite))
            loaded += 1
        except (ResourceMissing, ConfigError):  # a hub task or a hub learner (bert-base-uncased): not offline
            return
        except DataError as e:  # a data folder outside the repository that this machine lacks
            absent.add(f"{suite.tasks[cell.task]['name']} ({e})")
    assert len(keys) == loaded  # no two cells share a result file
    if absent:
        pytest.skip(f"{path.name}: {len(cells) - loaded} cells need data not here: {'; '.join(sorted(absent))}")


def test_a_suite_task_without_its_data_is_skipped_with_the_reason(tmp_path):
    raw = yaml.safe_load((SUITES / "smoke.yaml").read_text())
    raw["tasks"] = [{"name": "mr", "subset": SLICE}, {"name": "sst2", "data_dir": str(tmp_path / "absent")}]
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(pytest.skip.Exception, match="sst2 .*absent"):
        test_every_suite_in_benchmarks_parses_and_plans_its_whole_grid(tmp_path / "suite.yaml")


def test_smoke_suite_runs_and_reports(tmp_path, cache, check_accuracy):
    from textdistill.data import get_task
    from textdistill.learners import get_learner
    from textdistill.distilled import DistilledDataset
    from textdistill.train import Recipe

    suite = tiny_smoke()
    results = run_suite(suite, tmp_path / "out", progress=False)
    assert not results["missing"]
    methods = {(r["method"], r["dpc"]) for r in results["records"]}
    assert methods == {("random", 2), ("herding", 2), ("kmeans", 2), ("full", None), ("full, set recipe", None)}
    full = {r["method"]: r for r in results["records"] if r["dpc"] is None}
    learner = get_learner("minilm-frozen")
    recipe = {m: Recipe.from_dict(r["recipe"]) for m, r in full.items()}
    assert recipe["full"] == learner.full_data_recipe(full["full"]["train_set"]["size"])
    assert recipe["full, set recipe"] == learner.default_recipe
    task = get_task("mr", subset=SLICE)
    sets = {ds.fingerprint(): ds for ds in map(DistilledDataset.load, (tmp_path / "out" / "sets").iterdir())}
    for r in results["records"]:
        assert len(r["runs"]) == 2
        # one run of each cell done again by hand, from the saved set (the full data: the task's training split)
        check_accuracy(task, None if r["dpc"] is None else sets[r["train_set"]["fingerprint"]], r)
        assert r["steps"]["evaluate"]["seconds"] >= 0 and r["steps"]["evaluate"]["peak_rss_mib"] > 0
    # each set's tokens as its table's learner reads them, shown beside its budget
    tokenizer = get_learner("minilm").tokenizer
    for r in results["records"]:
        if r["dpc"] is not None:
            texts = sets[r["train_set"]["fingerprint"]].texts
            assert r["tokens"] == sum(len(tokenizer(t, truncation=True, max_length=64)["input_ids"]) for t in texts)
    md, page = write_report(tmp_path / "out")
    assert "| method | 2/class | tokens |" in md.read_text()
    assert "| herding |" in md.read_text() and "data:image/png;base64," in page.read_text()
    assert "full data, small-set recipe" in md.read_text()
    # every saved set has its page (examples, nearest real sentences, an embedded map), linked from the report
    for folder in (tmp_path / "out" / "sets").iterdir():
        text = (folder / "page.html").read_text()
        assert "nearest real training sentence" in text and "data:image/png;base64," in text
        assert f'href="sets/{folder.name}/page.html"' in page.read_text()


def test_a_killed_run_resumes_without_redoing_finished_cells(tmp_path, cache, monkeypatch):
    suite, out = tiny_smoke(), tmp_path / "out"
    calls = []
    real = Runner.run_cell

    def dies_on_the_third(self, cell):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(cell)
        return real(self, cell)

    monkeypatch.setattr(Runner, "run_cell", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        run_suite(suite, out, progress=False)
    assert len(list((out / "cells").glob("*.json"))) == 2
    assert len(collect(suite, out)["missing"]) == len(plan(suite)) - 2

    resumed = []
    monkeypatch.setattr(Runner, "run_cell", lambda self, cell: resumed.append(cell) or real(self, cell))
    results = run_suite(suite, out, progress=False)
    assert set(resumed) == set(plan(suite)) - set(calls) and not results["missing"]


def test_sets_distilled_first_are_evaluated_later_without_distilling_again(tmp_path, cache, monkeypatch):
    from textdistill.methods.coreset import Herding

    suite, out = tiny_smoke(methods=["herding"]), tmp_path / "out"
    results = run_suite(suite, out, progress=False, distill_only=True)
    assert len(results["missing"]) == len(plan(suite)) and len(list((out / "sets").iterdir())) == 2  # random too
    monkeypatch.setattr(Herding, "distill", lambda *a, **k: pytest.fail("distilled twice"))
    assert not run_suite(suite, out, progress=False)["missing"]
    other = tiny_smoke(methods=["herding"], seeds=1)  # evaluated differently: the same set
    assert not run_suite(other, out, progress=False)["missing"]
    glove = suite.evaluated_with(["textcnn-glove"])  # other learners, still distilled with minilm-frozen
    assert glove.learner_of(glove.methods[0]) == "minilm-frozen"
    assert {r["learner"] for r in run_suite(glove, out, progress=False)["records"]} == {"textcnn-glove"}


def test_the_paper_suites_dilm_is_the_paper_config():
    paper = yaml.safe_load((SUITES.parent / "configs" / "dilm-paper.yaml").read_text())
    (dilm,) = [m for m in yaml.safe_load((SUITES / "paper-sst2.yaml").read_text())["methods"]
               if isinstance(m, dict) and m["method"] == "dilm"]
    assert {k: v for k, v in paper.items() if k not in ("guidance", "filter_labels")} == dilm["options"]


def test_the_plan_and_its_estimate_come_from_measured_cells(tmp_path, cache, capsys):
    from textdistill.bench import CostModel, cell_seconds

    suite, out = tiny_smoke(methods=["herding"]), tmp_path / "out"
    run_suite(suite, out, shard=(0, 2))
    assert "cells in this shard, 0 finished" in capsys.readouterr().err
    docs = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    assert docs and all(cell_seconds(doc) >= doc["seconds"] > 0 for doc in docs)
    cached = {"seconds": 0.5, "records": [  # runs served by the cache: the cell costs what they cost to measure
        {"steps": {"distill": {"seconds": 30.0}, "evaluate": {"seconds": 0.1}}, "runs": [{"seconds": 100.0}] * 2},
        {"steps": {"distill": {"seconds": 30.0}, "decode": {"seconds": 2.0}}, "runs": [{"seconds": 50.0}]}]}
    assert cell_seconds(cached) == 30.0 + 2.0 + 200.0 + 50.0
    run_suite(suite, out)
    err = capsys.readouterr().err
    assert f"{len(plan(suite))} cells, {len(docs)} finished" in err and "to go" in err

    # the estimate: a cell's distillation by its method's, its runs by runs of their kind at the same task and
    # budget, or scaled from another budget by the examples a training step reads
    suite = tiny_smoke(methods=["random", "herding", {"method": "bptt", "decode": True}], dpc=[1, 10])
    full, random1, herding1, bptt1, random10, herding10, bptt10 = plan(suite)  # mr (2 classes)

    def doc(distill, *records):  # records: (kind of set, seconds of each run)
        return {"seconds": 1.0, "records": [{"kind": kind, "steps": {"distill": {"seconds": distill}},
                                             "runs": [{"seconds": r} for r in runs]} for kind, runs in records]}

    costs = CostModel()
    costs.add(full, suite, {"seconds": 100.0, "records": []})
    assert costs.estimate([full, random1], suite) == (200.0, 1)  # before any set cell: the full-data cell's cost
    costs.add(random1, suite, doc(1.0, ("text", [10.0, 20.0])))
    # random at 10 per class: its distillation at 1 per class, 2 runs at 15 s scaled by the batch (20 / 2 examples);
    # herding at 1 per class: no herding cell yet (a guessed distillation, the median), the suite's 2 seeds x 15 s
    assert costs.estimate([random10, herding1, full], suite) == (1.0 + 2 * 150.0 + 1.0 + 2 * 15.0 + 100.0, 1)
    costs.add(random10, suite, doc(3.0, ("text", [100.0, 120.0])))
    assert costs.estimate([herding10], suite) == (2.0 + 2 * 110.0, 1)  # runs measured at this budget now
    # a bound set trains its own short recipe: its runs are costed by runs of their kind, its text by text runs
    costs.add(bptt1, suite, doc(50.0, ("token-embeddings", [1.0, 3.0]), ("text", [12.0, 18.0])))
    assert costs.estimate([bptt10], suite) == (50.0 + 2 * 2.0 * 10 + 2 * 110.0, 0)
    halves = CostModel()  # a cell run beside another (--workers 2) took a worker's seconds: half of the wall
    halves.add(random1, suite, {**doc(1.0, ("text", [10.0, 20.0])), "workers": 2})
    assert halves.estimate([random1], suite) == (0.5 + 2 * 7.5, 0)
    out_of_order = CostModel()  # in parallel a set cell can finish before the full data: it stands in for it
    out_of_order.add(random1, suite, doc(1.0, ("text", [10.0, 20.0])))
    assert out_of_order.estimate([full], suite) == (31.0, 1)


def test_the_suites_cost_sums_computing_and_shares_the_wall_time():
    from textdistill.bench import suite_cost
    from textdistill.report import _cost_line

    def doc(seconds, run_seconds, peak=None, **extra):
        step = {"seconds": 10.0, **({"peak_rss_mib": peak} if peak else {})}
        return {"seconds": seconds, "records": [{"steps": {"distill": step}, "runs": [{"seconds": run_seconds}]}],
                **extra}

    # a cell beside another worker (its wall time above its work), one alone, one served by the cache (a second
    # of wall time, an hour of work)
    docs = [doc(100.0, 80.0, peak=900, workers=2), doc(50.0, 40.0, peak=1200), doc(1.0, 3590.0)]
    cost = suite_cost(docs)
    assert cost == {"cells": 3, "compute_seconds": 100.0 + 50.0 + 3600.0, "wall_seconds": 50.0 + 50.0 + 1.0,
                    "workers": 2, "peak_rss_mib": 1200, "peak_cuda_mib": None}
    assert _cost_line(cost) == ("Cost of the 3 finished cells: 1 h 02 min of computing (each cell's distillation "
                                "and evaluation runs, as measured when they ran), 2 min of the cells' wall time with "
                                "up to 2 cells at once (`--workers 2`; a cell run beside others counts at its share); "
                                "peak memory 1200 MiB, the largest any step measured (per process; 2 processes ran "
                                "at once).")
    # herding ignores its seed: a second set's cell gets the first's runs from the cache, counted once
    herding = [doc(40.0, 40.0), doc(12.0, 40.0)]
    for d in herding:
        d["records"][0].update(learner="minilm", train_set={"fingerprint": "same"}, recipe={"steps": 200})
        d["records"][0]["runs"][0]["learner_seed"] = 7
    assert suite_cost(herding)["compute_seconds"] == 50.0 + 12.0
    alone = _cost_line(suite_cost([doc(5.0, 3.0)]))
    assert "at once" not in alone and "peak memory" not in alone


def test_worker_processes_run_every_cell_as_a_serial_run_does(tmp_path, cache, capsys):
    suite, out = tiny_smoke(methods=["herding"]), tmp_path / "out"
    assert not run_suite(suite, out, workers=2)["missing"]
    err = capsys.readouterr().err
    assert "cells queued or running" in err and err.rstrip().endswith("every cell finished]")
    serial = run_suite(suite, tmp_path / "serial", progress=False)  # served by the cache the workers filled

    def accuracies(results):
        return sorted((r["method"], str(r["dpc"]), [run["accuracy"] for run in r["runs"]]) for r in results["records"])

    parallel = collect(suite, out)
    assert accuracies(parallel) == accuracies(serial)
    cost = parallel["cost"]
    assert cost["cells"] == len(plan(suite)) and cost["workers"] == 2 and cost["peak_rss_mib"] > 100
    write_report(out)
    assert "up to 2 cells at once" in (out / "report.md").read_text()
    run_suite(suite, out)
    assert f"{len(plan(suite))} finished, 0 to run" in capsys.readouterr().err  # under the serial run's keys
    for bad in ({"workers": 0}, {"workers": 2, "ray": "local"}):
        with pytest.raises(ConfigError, match="workers"):
            run_suite(suite, out, **bad)


def test_worker_processes_draw_no_progress_bars(tmp_path, cache, capfd):
    """A worker's bars would interleave with the driver's: dm's bar, drawn by a serial run, is not drawn by
    workers (their stderr is this process's), while the driver's bar counts the cells."""
    import re

    suite = tiny_smoke(methods=[{"method": "dm", "options": {"iterations": 2}}])
    run_suite(suite, tmp_path / "serial", distill_only=True)
    assert re.search(r"dm \S+ 2/class", capfd.readouterr().err)
    run_suite(suite, tmp_path / "workers", workers=2, distill_only=True)
    err = capfd.readouterr().err
    assert err.rstrip().endswith("every cell finished]") and not re.search(r"dm \S+ 2/class", err)


def test_a_cell_failing_in_a_worker_keeps_the_others_and_names_its_error(tmp_path, cache):
    """herding at 20 per class cannot pick from 12 training examples a class: that cell fails in its spawned
    process; the cells that finished or were running are kept, and the error reaches the caller as it is. (With
    3 cells on 2 workers none is still queued when it fails: the pool hands out one cell more than it has
    processes, so every other cell runs.)"""
    from textdistill.errors import DataError

    suite, out = tiny_smoke(methods=["herding"], dpc=[2, 20]), tmp_path / "out"
    with pytest.raises(DataError, match="fewer than the budget of 20"):
        run_suite(suite, out, workers=2, progress=False)
    finished = {p.stem for p in (out / "cells").glob("*.json")}
    assert finished == {c.key(suite) for c in plan(suite) if c.dpc != 20}


def test_shards_split_the_cells(tmp_path, cache):
    suite, out = tiny_smoke(methods=["herding"]), tmp_path / "out"
    first = run_suite(suite, out, shard=(0, 2), progress=False)
    assert first["missing"] and len(first["missing"]) < len(plan(suite))
    assert not run_suite(suite, out, shard=(1, 2), progress=False)["missing"]


def fake_results(shift=0.0):
    """A results.json with two learners, two budgets, full data and a published number."""
    records = []
    for learner in ("minilm", "textcnn-glove"):
        for method, base in (("random", 0.55), ("kmeans", 0.60), ("bptt+text", 0.58)):
            for dpc in (1, 10):
                acc = base + 0.01 * dpc + shift
                records.append({"task": "mr", "learner": learner, "method": method, "dpc": dpc, "set_seed": 0,
                                "train_set": {"size": 2 * dpc},
                                "runs": [{"seed": s, "accuracy": acc + 0.01 * s, "seconds": 1.0} for s in range(3)],
                                "steps": {"distill": {"seconds": 5.0, "peak_rss_mib": 700}, "evaluate": {}}})
        records.append({"task": "mr", "learner": learner, "method": "full", "dpc": None, "set_seed": None,
                        "train_set": {"size": 3000}, "runs": [{"seed": 0, "accuracy": 0.75, "seconds": 9.0}],
                        "steps": {"evaluate": {}}})
    published = [{"task": "mr", "method": "kmeans", "dpc": 10, "accuracy": 70.0, "source": "a paper",
                  "learner": "minilm"}]
    return {"suite": {"name": "fixture", "published": published}, "environments": [{"torch": "x"}],
            "records": records, "missing": []}


@pytest.fixture
def results_dir(tmp_path):
    out = tmp_path / "a"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(fake_results()))
    return out


def test_report_renders_tables_plots_and_published_numbers(results_dir):
    md, page = write_report(results_dir, command="textdistill bench x.yaml --out a")
    text = md.read_text()
    assert "| kmeans | 62.0 ± 0.8 (+5.0, 83%) | 71.0 ± 0.8 (+5.0, 95%) |" in text
    assert "| full data (3000) | 75.0 (1 run) |" in text
    assert "| mr | kmeans | 10 | 71.0 ± 0.8 | 70.0 | a paper |" in text
    assert "cross-architecture" in text and "`textdistill bench x.yaml --out a`" in text
    plots = sorted(p.name for p in (results_dir / "plots").glob("*.png"))
    assert plots == ["mr-cross-architecture.png", "mr-minilm.png", "mr-textcnn-glove.png"]
    assert page.read_text().count("data:image/png;base64,") == 3


def test_report_shows_tokens_per_set_beside_each_budget_and_blank_for_cells_without_them(tmp_path):
    results = fake_results()
    for r in results["records"]:
        if r["learner"] == "minilm" and r["dpc"] is not None and not (r["method"] == "random" and r["dpc"] == 10):
            r["tokens"] = 25 * r["train_set"]["size"] + (1000 if r["method"] == "kmeans" else 0)
    out = tmp_path / "tokens"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(results))
    text = write_report(out)[0].read_text()
    assert "| method | 1/class | tokens | 10/class | tokens |" in text
    assert "| kmeans | 62.0 ± 0.8 (+5.0, 83%) | 1,050 | 71.0 ± 0.8 (+5.0, 95%) | 1,500 |" in text
    assert "| random | 57.0 ± 0.8 (76%) | 50 | 66.0 ± 0.8 (88%) |  |" in text  # a cell recorded before the count
    assert "| full data (3000) | 75.0 (1 run) |  |  |  |" in text
    # a learner whose cells never recorded tokens keeps the table it had
    assert "| method | 1/class | 10/class |" in text


def test_report_links_the_pages_of_finished_cells_that_this_machine_has(tmp_path):
    """sets/ is local: a set distilled for a cell not finished yet is not linked, nor a finished cell's set
    that another machine distilled."""
    results = fake_results()
    for r in results["records"]:
        r["artifact"] = f"sets/mr-{r['method']}-{r['dpc']}-s0"
    out = tmp_path / "out"
    for name in ("mr-kmeans-10-s0", "mr-dilm-10-s0"):  # dilm: distilled, its cell not finished
        (out / "sets" / name).mkdir(parents=True)
        (out / "sets" / name / "page.html").write_text("<html></html>")
    (out / "results.json").write_text(json.dumps(results))
    text = write_report(out)[0].read_text()
    assert "- [mr-kmeans-10-s0](sets/mr-kmeans-10-s0/page.html)" in text
    assert "mr-dilm-10-s0" not in text and "mr-random-1-s0" not in text


def test_a_partial_report_keeps_the_budgets_not_finished_and_counts_what_is_missing(tmp_path):
    results = fake_results()
    results["records"] = [r for r in results["records"] if r["dpc"] != 10]
    results["suite"]["dpc"] = [1, 10]
    results["missing"] = [f"mr cell {i}" for i in range(12)]
    out = tmp_path / "partial"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(results))
    text = write_report(out)[0].read_text()
    assert "| method | 1/class | 10/class |" in text and "| kmeans | 62.0 ± 0.8 (+5.0, 83%) | - |" in text
    assert "12 cell(s) not run yet: mr cell 0;" in text and "mr cell 9; and 2 more" in text


def test_compare_two_result_directories(tmp_path, results_dir, capsys):
    other = tmp_path / "b"
    other.mkdir()
    (other / "results.json").write_text(json.dumps(fake_results(shift=0.02)))
    table = compare(results_dir, other)
    assert "| mr | minilm | kmeans | 10 | 71.0 ± 0.8 | 73.0 ± 0.8 | +2.0 |" in table
    assert main(["compare", str(results_dir), str(other)]) == 0
    assert "+2.0" in capsys.readouterr().out


def test_report_and_compare_cope_with_failed_runs(tmp_path, results_dir):
    """A cell whose every run diverged shows as failed; a cell with some failed runs averages the rest."""
    results = fake_results()
    for r in results["records"]:
        if r["learner"] == "minilm" and r["method"] == "kmeans":
            for x in r["runs"] if r["dpc"] == 1 else r["runs"][:1]:
                x.update(accuracy=None, failed="training loss became nan at step 0")
    out = tmp_path / "failed"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(results))
    text = write_report(out)[0].read_text()
    assert "| kmeans | failed (3 runs) | 71.5 ± 0.5 (1 failed) (+5.5, 95%) |" in text
    assert "| mr | minilm | kmeans | 1 | 62.0 ± 0.8 | failed (3 runs) | - |" in compare(results_dir, out)


def test_report_counts_distinct_sets_and_names_its_standard_deviation(tmp_path):
    """Herding ignores its seed: three identical sets are one set, and the report says so; std is numpy's."""
    import copy

    import numpy as np

    from textdistill.report import aggregate

    results = fake_results()
    for r in list(results["records"]):
        if r["learner"] == "minilm" and r["method"] in ("random", "kmeans") and r["dpc"] == 10:
            for k in (0, 1, 2):  # random: three different sets; kmeans: the same set three times
                other = copy.deepcopy(r) if k else r
                fp = f"{r['method']}-{k}" if r["method"] == "random" else "same"
                other.update(set_seed=k, train_set={"size": 20, "fingerprint": fp})
                for x in other["runs"]:
                    x["accuracy"] += 0.01 * k
                if k:
                    results["records"].append(other)
    out = tmp_path / "sets"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(results))
    text = write_report(out)[0].read_text()
    assert "numpy's std with ddof=0" in text
    row = next(line for line in text.splitlines() if line.startswith("| kmeans |"))
    assert row.endswith("| 72.0 ± 1.2 (over 1 distinct set of 3) (+5.0, 96%) |"), row
    assert "distinct" not in next(line for line in text.splitlines() if line.startswith("| random |"))
    cell = aggregate(results["records"])[("mr", "minilm", "kmeans", 10)]
    accs = [100 * x["accuracy"] for r in results["records"] if r["method"] == "kmeans" and r["dpc"] == 10
            and r["learner"] == "minilm" for x in r["runs"]]
    assert len(accs) == 9 and cell["std"] == pytest.approx(np.std(accs)) and cell["distinct"] == 1


@pytest.mark.parametrize("change, message", [
    ({"bogus": 1}, "unknown key"),
    ({"methods": ["nope"]}, "unknown method 'nope'"),
    ({"methods": [{"method": "kmeans", "options": {"n_clusters": 3}}]}, "unknown option"),
    ({"dpc": [0]}, "positive integers"),
    ({"methods": ["kmeans", {"method": "kmeans"}]}, "unique"),
    ({"tasks": [{"name": "mr", "split": 1}]}, "a task is"),
])
def test_bad_suites_are_refused_before_anything_runs(change, message):
    raw = yaml.safe_load((SUITES / "smoke.yaml").read_text())
    raw.update(change)
    with pytest.raises(ConfigError, match=message):
        parse_suite(raw)


def test_cli_bench_and_report(tmp_path, cache, capsys):
    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump({"tasks": [{"name": "mr", "subset": SLICE}], "learners": ["minilm-frozen"],
                                     "methods": ["herding"], "dpc": [1], "seeds": 1}))
    assert main(["bench", str(suite), "--out", str(tmp_path / "o")]) == 0
    assert main(["report", str(tmp_path / "o")]) == 0
    assert "report.html" in capsys.readouterr().out
    assert main(["bench", str(suite), "--out", str(tmp_path / "o"), "--shard", "2/2"]) == 2
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert main(["bench", str(suite), "--out", str(tmp_path / "o2"), "--seeds", "2", "--full-seeds", "1"]) == 0
    runs = {r["method"]: len(r["runs"]) for r in json.loads((tmp_path / "o2" / "results.json").read_text())["records"]}
    assert runs == {"random": 2, "herding": 2, "full": 1, "full, set recipe": 1}
    assert "--seeds 2 --full-seeds 1" in (tmp_path / "o2" / "report.md").read_text()
    assert main(["bench", str(suite), "--out", str(tmp_path / "o3"), "--seeds", "0"]) == 2
    for bad in ("0", "1,x"):
        assert main(["bench", str(suite), "--out", str(tmp_path / "o3"), "--dpc", bad]) == 2
    assert main(["bench", str(suite), "--out", str(tmp_path / "o3"), "--tasks", "bbc"]) == 2
    assert not (tmp_path / "o3").exists()


def test_a_budget_override_keeps_the_keys_of_the_cells_it_keeps():
    """bench --dpc 10 on a suite of 1 and 10 per class runs the 10-per-class cells under the suite's own keys, so
    a narrowed run and a whole one share their finished cells (each writes its own report); a budget given twice
    runs once."""
    suite = parse_suite({"name": "k", "tasks": [{"name": "mr", "subset": SLICE}], "learners": ["minilm-frozen"],
                         "methods": ["random", "herding"], "dpc": [1, 10], "seeds": 1})
    narrow = suite.evaluated_with(dpc=[10, 10])
    assert [c.dpc for c in plan(narrow)] == [None, 10, 10]
    assert {c.key(narrow) for c in plan(narrow)} < {c.key(suite) for c in plan(suite)}


def test_a_task_override_keeps_the_keys_of_the_cells_it_keeps():
    """bench --tasks runs some of a suite's tasks under the suite's own cell keys (a run spread over task subsets
    fills one folder); a task the suite lacks is named in the error."""
    slices = [{"name": "mr", "subset": SLICE}, {"name": "mr:validation", "subset": SLICE}]
    suite = parse_suite({"name": "k", "tasks": slices, "learners": ["minilm-frozen"], "methods": ["random"],
                         "dpc": [1], "seeds": 1})
    narrow = suite.evaluated_with(tasks=["mr:validation"])
    assert narrow.tasks == slices[1:]
    assert {c.key(narrow) for c in plan(narrow)} < {c.key(suite) for c in plan(suite)}
    with pytest.raises(ConfigError, match=r"\['sst2'\] are not in suite k \(its tasks: mr, mr:validation\)"):
        suite.evaluated_with(tasks=["mr", "sst2"])


def test_cell_keys_follow_the_task_content(tmp_path):
    """A task file whose content changes (same name, same options) gives new cell and set keys."""
    data = tmp_path / "t.csv"
    rows = [f"{'good' if i % 2 else 'bad'} example number {i},{i % 2}" for i in range(40)]
    data.write_text("text,label\n" + "\n".join(rows) + "\n")
    suite = parse_suite({"name": "k", "tasks": [str(data)], "learners": ["minilm-frozen"], "methods": ["random"],
                         "dpc": [1], "seeds": 1})
    before = [(c.key(suite), c.entry is None or c.set_key(suite)) for c in plan(suite)]
    data.write_text("text,label\n" + "\n".join(rows[:-1] + ["an edited example,1"]) + "\n")
    from textdistill.bench.cells import _load_task

    _load_task.cache_clear()  # a new process would read the file again
    after = [(c.key(suite), c.entry is None or c.set_key(suite)) for c in plan(suite)]
    assert all(b[0] != a[0] for b, a in zip(before, after))
    assert before[1][1] != after[1][1]


def test_a_ray_run_equals_the_serial_run_and_resumes(tmp_path, monkeypatch):
    """Cells as Ray tasks on a local instance: the same cell files and records as a serial run (each run with its
    own fresh cache, so nothing is read back), and a run that lost cells redoes only those."""
    from textdistill.resources import cache_dir

    suite = tiny_smoke(methods=["herding", "kmeans"])

    def fresh_cache(name):
        (tmp_path / name).mkdir()
        (tmp_path / name / "downloads").symlink_to(cache_dir() / "downloads")
        monkeypatch.setenv("TEXTDISTILL_CACHE", str(tmp_path / name))

    fresh_cache("serial-cache")
    serial = run_suite(suite, tmp_path / "serial", progress=False)
    fresh_cache("ray-cache")
    on_ray = run_suite(suite, tmp_path / "ray", progress=False, ray="local")
    cells = sorted(p.name for p in (tmp_path / "serial" / "cells").glob("*.json"))
    assert cells == sorted(p.name for p in (tmp_path / "ray" / "cells").glob("*.json")) and not on_ray["missing"]

    def accuracies(results):
        return sorted((r["method"], r["dpc"] or 0, [run["accuracy"] for run in r["runs"]]) for r in results["records"])

    assert accuracies(on_ray) == accuracies(serial)
    kept = {p: p.stat().st_mtime_ns for p in (tmp_path / "ray" / "cells").glob("*.json")}
    lost = sorted(kept)[:2]
    for p in lost:  # as if the run had been killed before these finished
        p.unlink()
    again = run_suite(suite, tmp_path / "ray", progress=False, ray="local")
    assert accuracies(again) == accuracies(serial)
    assert all(p.exists() and (p in lost or p.stat().st_mtime_ns == kept[p]) for p in kept)


def test_a_ray_driver_that_cannot_see_a_workers_set_stops_with_the_reason(tmp_path, cache):
    """On a cluster a worker saves its set on its own node: a driver whose --out lacks it says --out must be shared."""
    from textdistill.bench import check_set_visible

    suite = tiny_smoke(methods=["herding"], learners=["minilm-frozen"], seeds=1)
    run_suite(suite, tmp_path / "worker", progress=False)
    (cell,) = [c for c in plan(suite) if c.entry is not None and suite.methods[c.entry].label == "herding"]
    check_set_visible(suite, tmp_path / "worker", cell)  # the driver sees the worker's folder
    with pytest.raises(ConfigError, match="every Ray node shares"):
        check_set_visible(suite, tmp_path / "driver", cell)


def test_ray_missing_is_a_clear_error(tmp_path, cache, monkeypatch):
    import builtins

    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "ray" else real_import(name, *a, **k))
    with pytest.raises(ConfigError, match=r"pip install 'textdistill\[ray\]'"):
        run_suite(tiny_smoke(methods=["herding"]), tmp_path / "out", progress=False, ray="local")


def test_a_suite_with_audit_reports_privacy_columns(tmp_path, cache):
    suite = tiny_smoke(methods=["herding"], learners=["minilm-frozen"], seeds=1, audit=True)
    results = run_suite(suite, tmp_path / "out", progress=False)
    audited = [r for r in results["records"] if r["dpc"]]
    assert audited and all(r["audit"]["exact_copies"] == r["train_set"]["size"] for r in audited)  # coresets copy
    assert all(r["audit"]["max_word_overlap_train"] == 1.0 and "distance_auc" not in r["audit"] for r in audited)
    md, _ = write_report(tmp_path / "out")
    assert "privacy audit" in md.read_text() and "| herding | 2 | 0 | 4 | 100% |" in md.read_text()
    plain = tiny_smoke(methods=["herding"], learners=["minilm-frozen"], seeds=1)
    assert {c.key(plain) for c in plan(plain)} != {c.key(suite) for c in plan(suite)}


def test_the_setfit_bar_row_trains_setfit_on_the_random_sets_and_shows_in_every_table(tmp_path, cache):
    """bar: setfit-minilm adds one cell per random set, evaluated with SetFit alone on the very set the random
    row holds; each learner's table shows it (with its gain over that learner's random), and SetFit gets no
    table of its own."""
    suite = parse_suite({"name": "b", "tasks": [{"name": "mr", "subset": SLICE}], "learners": ["minilm-frozen"],
                         "methods": ["herding"], "dpc": [2], "seeds": 1, "bar": "setfit-minilm"})
    cells = plan(suite)
    assert [c.bar for c in cells] == [False, False, False, True] and cells[-1].entry == cells[1].entry
    assert len({c.key(suite) for c in cells}) == 4 and cells[-1].set_key(suite) == cells[1].set_key(suite)
    results = run_suite(suite, tmp_path / "o", progress=False)
    bar = [r for r in results["records"] if r.get("bar")]
    random = [r for r in results["records"] if r["method"] == "random" and not r.get("bar")]
    assert [r["learner"] for r in bar] == ["setfit-minilm"] and bar[0]["runs"][0]["accuracy"] is not None
    assert bar[0]["train_set"]["fingerprint"] == random[0]["train_set"]["fingerprint"]
    md = write_report(tmp_path / "o")[0].read_text()
    assert "SetFit bar: setfit-minilm on the random sets" in md and "learner setfit-minilm" not in md
