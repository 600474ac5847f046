"""Predictable faults end in one clear line, processes do not outlive their driver, every file follows the
umask, and the commands that do no work start at once."""

import os
import stat
import subprocess
import sys

import pytest

from textdistill import cache


# -- files follow the umask --------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_mtt_expert_files_follow_the_umask(mr_small, tmp_path, mask):
    """safetensors writes a new file of its own (0600) over the one atomic_write prepared."""
    from textdistill.learners import get_learner
    from textdistill.methods.mtt import MTTConfig, buffer

    cfg = MTTConfig(experts=1, expert_epochs=2, max_start_epoch=1, match_epochs=1, buffer_dir=str(tmp_path))
    old = os.umask(mask)
    cache.umask.cache_clear()
    try:
        (path,) = buffer(mr_small, get_learner("minilm-frozen"), cfg, progress=False)
    finally:
        os.umask(old)
        cache.umask.cache_clear()
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


# -- start-up: the commands that do no work import no model library ----------------------------------------------
def imported_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.splitlines()[-1].split())


HEAVY = {"torch", "transformers", "datasets", "pandas", "sklearn", "matplotlib"}


@pytest.mark.parametrize("code", [
    "import textdistill",
    "import textdistill.cli as c\ntry: c.main(['--version'])\nexcept SystemExit: pass",
    "import textdistill.cli as c\ntry: c.main(['--help'])\nexcept SystemExit: pass",
    "import textdistill.cli as c; c.main(['list', 'tasks'])",
    "import textdistill.cli as c; c.main(['list', 'learners'])",
    "import textdistill.cli as c; c.main(['list', 'methods'])",
])
def test_commands_that_do_no_work_import_no_model_library(code):
    assert HEAVY & imported_after(code) == set()


def test_the_package_still_offers_its_api_by_attribute():
    import textdistill as td
    from textdistill.api import distill
    from textdistill.distilled import DistilledDataset

    assert td.distill is distill and td.DistilledDataset is DistilledDataset
    assert set(td.__all__) <= set(dir(td))
    for name in td.__all__:
        assert getattr(td, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        td.nope  # noqa: B018


def test_list_learners_names_every_registered_learner_as_the_registry_does(capsys):
    from textdistill.cli import main
    from textdistill.learners import DESCRIPTIONS

    assert main(["list", "learners"]) == 0
    lines = capsys.readouterr().out.splitlines()
    shown = {line.split()[0]: line.split(None, 1)[1] for line in lines}
    assert {k: v for k, v in shown.items() if k in DESCRIPTIONS} == DESCRIPTIONS
    assert set(shown) - set(DESCRIPTIONS) == {"<hf-id"}  # the any-model row


def test_list_methods_names_every_registered_method_as_the_registry_does(capsys):
    from textdistill.cli import main
    from textdistill.methods import METHODS

    assert main(["list", "methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    shown = {line.split()[0]: line.split(None, 1)[1] for line in lines[:-1]}
    assert shown == {name: cls.description for name, cls in METHODS.items()}
    assert "--options" in lines[-1]


# -- the Python API checks its arguments at the door ---------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_task():
    import textdistill as td

    return td.get_task("mr").subset(train_per_class=6, test_size=20, seed=0)


@pytest.mark.parametrize("call, message", [
    (lambda td, t: td.distill(3, "random", dpc=1), r"task must be .*got int 3"),
    (lambda td, t: td.distill(t, 3, dpc=1), r"method must be .*got int 3"),
    (lambda td, t: td.distill(t, ["random"], dpc=1), r"method must be .*got list"),
    (lambda td, t: td.distill(t, "random", dpc="2"), r"dpc must be .*got str '2'"),
    (lambda td, t: td.distill(t, "random", dpc=True), r"dpc must be .*got bool"),
    (lambda td, t: td.distill(t, "random", dpc=0), r"dpc must be at least 1, got 0"),
    (lambda td, t: td.distill(t, "random", dpc=1, learner=3), r"learner must be .*got int 3"),
    (lambda td, t: td.distill(t, "random", dpc=1, seed="0"), r"seed must be .*got str '0'"),
    (lambda td, t: td.distill(t, "random", dpc=1, device=0), r"device must be .*got int 0"),
    (lambda td, t: td.evaluate(t, "runs/x", learners=["minilm-frozen"]), r"ds must be .*got str 'runs/x'"),
    (lambda td, t: td.evaluate(t, None, learners=3), r"learners must be .*got int 3"),
    (lambda td, t: td.evaluate(t, None, learners=["minilm-frozen", 3]), r"learners\[1\] must be .*got int 3"),
    (lambda td, t: td.evaluate(t, None, learners="minilm-frozen", seeds="5"), r"seeds must be .*got str '5'"),
    (lambda td, t: td.get_task(3), r"task must be .*got int 3"),
    (lambda td, t: td.get_method(["kmeans"]), r"method must be .*got list"),
    (lambda td, t: td.get_learner(3), r"learner must be .*got int 3"),
])
def test_api_arguments_of_the_wrong_type_are_named(tiny_task, call, message):
    import textdistill as td

    with pytest.raises((TypeError, td.TextDistillError), match=message) as caught:
        call(td, tiny_task)
    assert isinstance(caught.value, td.TextDistillError)  # one family to catch, as every bad input


def test_api_takes_one_learner_name_where_a_list_is_expected(tiny_task):
    import textdistill as td

    ds = td.distill(tiny_task, "random", dpc=1, learner="minilm-frozen")
    (one,) = td.evaluate(tiny_task, ds, learners="minilm-frozen", seeds=1)
    (listed,) = td.evaluate(tiny_task, ds, learners=["minilm-frozen"], seeds=1)
    (learner,) = td.evaluate(tiny_task, ds, learners=td.get_learner("minilm-frozen"), seeds=1)
    assert one.learner == listed.learner == learner.learner == "minilm-frozen"
    assert one.runs[0]["accuracy"] == listed.runs[0]["accuracy"] == learner.runs[0]["accuracy"]
    assert td.distill("mr", "random", dpc=1, learner="minilm-frozen").task["name"] == "mr"
    import numpy as np

    again = td.distill(tiny_task, "random", dpc=np.int64(1), learner="minilm-frozen", seed=np.int64(0))
    assert again.fingerprint() == ds.fingerprint()  # numpy's integers are integers


# -- a mistyped suite is named field by field ------------------------------------------------------------------------
def smoke_suite(**changes) -> dict:
    import yaml

    raw = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), "..", "benchmarks", "smoke.yaml")).read())
    raw.update(changes)
    return raw


PUBLISHED = {"task": "mr", "method": "herding", "dpc": 10, "accuracy": 70.0, "source": "a paper"}
MISTYPED = [  # (change, the field the message names, what it says was expected)
    ({"tasks": 3}, "tasks", "list"),
    ({"tasks": [3]}, "tasks[0]", "a task is a name or a mapping"),
    ({"tasks": [{"name": 3}]}, "tasks[0].name", "string"),
    ({"tasks": [{"name": "mr", "data_dir": 5}]}, "tasks[0].data_dir", "string"),
    ({"tasks": [{"name": "mr", "subset": 5}]}, "tasks[0].subset", "mapping"),
    ({"tasks": [{"name": "mr", "subset": {"train_per_class": "x"}}]}, "tasks[0].subset.train_per_class", "integer"),
    ({"tasks": [{"name": "mr", "subset": {"rows": 3}}]}, "tasks[0].subset", "train_per_class"),
    ({"learners": 3}, "learners", "list"),
    ({"learners": [3]}, "learners[0]", "string"),
    ({"learners": {"minilm": 1}}, "learners", "list"),
    ({"distill_learner": 3}, "distill_learner", "string"),
    ({"methods": 3}, "methods", "list"),
    ({"methods": [3]}, "methods[0]", "a method is a name or a mapping"),
    ({"methods": [{"method": ["kmeans"]}]}, "methods[0].method", "string"),
    ({"methods": [{"method": "kmeans", "options": 5}]}, "methods[0].options", "mapping"),
    ({"methods": [{"method": "kmeans", "options": [1]}]}, "methods[0].options", "mapping"),
    ({"methods": [{"method": "kmeans", "label": 3}]}, "methods[0].label", "string"),
    ({"methods": [{"method": "kmeans", "learner": 3}]}, "methods[0].learner", "string"),
    ({"methods": [{"method": "kmeans", "decode": "maybe"}]}, "methods[0].decode", "true or false"),
    ({"methods": [{"method": "kmeans", "options": {"n_init": "x"}}]}, "methods[0]", "n_init"),
    ({"dpc": "10"}, "dpc", "positive integer"),
    ({"dpc": [1.5]}, "dpc", "positive integer"),
    ({"dpc": [True]}, "dpc", "positive integer"),
    ({"dpc": {"a": 1}}, "dpc", "positive integer"),
    ({"sets": -1}, "sets", "positive integer"),
    ({"sets": "2"}, "sets", "positive integer"),
    ({"sets": 1.5}, "sets", "positive integer"),
    ({"sets": True}, "sets", "positive integer"),
    ({"seeds": 0}, "seeds", "positive integer"),
    ({"seeds": "5"}, "seeds", "positive integer"),
    ({"full_seeds": 0}, "full_seeds", "positive integer"),
    ({"audit": "maybe"}, "audit", "true or false"),
    ({"audit": 2}, "audit", "true or false"),
    ({"recipe": 5}, "recipe", "mapping"),
    ({"recipe": {"bogus": 1}}, "recipe", "bogus"),
    ({"recipe": {"steps": "x"}}, "recipe.steps", "integer"),
    ({"recipe": {"lr": "fast"}}, "recipe.lr", "number"),
    ({"recipe": {"steps": 0}}, "recipe", "steps >= 1"),
    ({"published": 5}, "published", "list"),
    ({"published": [5]}, "published[0]", "mapping"),
    ({"published": [{"task": "mr"}]}, "published[0]", "missing"),
    ({"published": [{**PUBLISHED, "accuracy": "high"}]}, "published[0].accuracy", "number"),
    ({"published": [{**PUBLISHED, "dpc": "ten"}]}, "published[0].dpc", "positive integer or 'full'"),
    ({"published": [{**PUBLISHED, "source": 3}]}, "published[0].source", "string"),
    ({"name": 3}, "name", "string"),
    ({"description": ["x"]}, "description", "string"),
]


@pytest.mark.parametrize("change, field, expected", MISTYPED, ids=[f"{c}" for c, _, _ in MISTYPED])
def test_a_mistyped_suite_names_the_field_and_what_was_expected(change, field, expected):
    from textdistill.bench import parse_suite
    from textdistill.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        parse_suite(smoke_suite(**change), "s.yaml")
    message = str(caught.value)
    assert message.startswith(f"s.yaml: {field}") and expected in message, message
    assert "\n" not in message


@pytest.mark.parametrize("change, field, expected", MISTYPED[::4], ids=[f"{c}" for c, _, _ in MISTYPED[::4]])
def test_a_mistyped_suite_is_one_line_from_the_cli(tmp_path, capsys, change, field, expected):
    import yaml

    from textdistill.cli import main

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(smoke_suite(**change)))
    assert main(["bench", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 's.yaml'}: {field}") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change, expected", [
    ({"methods": "kmeans"}, ["random", "kmeans"]),  # one name where a list is expected
    ({"learners": "minilm-frozen"}, ["random", "herding", "kmeans"]),
    ({"tasks": "mr"}, ["random", "herding", "kmeans"]),
    ({"audit": "yes"}, ["random", "herding", "kmeans"]),
])
def test_one_name_stands_for_a_list_of_it(change, expected):
    from textdistill.bench import parse_suite

    suite = parse_suite(smoke_suite(**change), "s.yaml")
    assert [e.label for e in suite.methods] == expected
    assert suite.tasks == [{"name": "mr"}] and suite.learners == ["minilm-frozen"]
    assert suite.audit is ("audit" in change)


# -- a file output that cannot be written stops before the work ----------------------------------------------------
@pytest.fixture
def saved_set(tmp_path):
    import torch

    from textdistill.distilled import DistilledDataset

    ds = DistilledDataset(kind="text", texts=["a fine film", "a dull film"], labels=torch.tensor([1, 0]),
                          label_names=["negative", "positive"], method="test",
                          task={"name": "mr", "origin": {"name": "mr"}})
    return ds.save(tmp_path / "set")


def no_work(monkeypatch):
    """Any of the commands' work raises: a test passes only if the command stopped before it."""
    import textdistill.audit
    import textdistill.evaluation
    import textdistill.page

    def work(*args, **kwargs):
        raise AssertionError("the work started")

    for module, name in ((textdistill.audit, "audit"), (textdistill.evaluation, "evaluate"),
                         (textdistill.page, "write_set_page")):
        monkeypatch.setattr(module, name, work)


def unwritable(tmp_path):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-folder").mkdir()
    cases = [(tmp_path / "a-folder", "is a directory"), (tmp_path / "a-file" / "out.json", "not a directory")]
    if os.path.isdir("/proc"):  # a folder nobody may create files in, root included
        cases.append(("/proc/out.json", "cannot write"))
    return cases


@pytest.mark.parametrize("command", [["audit", "{set}", "--json"], ["evaluate", "{set}", "--json"],
                                     ["show", "{set}", "--html"]], ids=lambda c: f"{c[0]} {c[2]}")
def test_an_unwritable_output_file_stops_before_the_work(tmp_path, saved_set, monkeypatch, capsys, command):
    from textdistill.cli import main

    no_work(monkeypatch)
    for path, why in unwritable(tmp_path):
        argv = [part.format(set=saved_set) for part in command] + [str(path), "--learner", "minilm-frozen"]
        if command[0] == "show":
            argv = argv[:-2]
        assert main(argv) == 2, path
        err = capsys.readouterr().err
        assert err.startswith(f"error: {command[2]} {path}") and why in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "a-folder", "set"]  # nothing left behind
    assert not any((tmp_path / "a-folder").iterdir())


def test_evaluate_json_goes_into_a_new_folder(tmp_path, saved_set, capsys):
    import json

    from textdistill.cli import main

    out = tmp_path / "new" / "deeper" / "r.json"
    assert main(["evaluate", str(saved_set), "--learner", "minilm-frozen", "--seeds", "1", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["learner"] == "minilm-frozen"
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~cache.umask()


# -- bench --workers: the workers end with their driver, and never outnumber the cores ----------------------------
def tiny_suite_file(tmp_path, **changes):
    import yaml

    raw = {"tasks": [{"name": "mr", "subset": {"train_per_class": 12, "test_size": 60, "seed": 0}}],
           "learners": ["minilm-frozen"], "methods": ["herding", "kmeans"], "dpc": [1, 2], "seeds": 1, **changes}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path / "s.yaml"


def fresh_cache(tmp_path):
    """An empty cache that still sees the downloaded MR sdist."""
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "downloads").symlink_to(cache.cache_dir() / "downloads")
    return folder


def test_workers_exit_when_the_driver_is_killed(tmp_path):
    import signal
    import time

    import psutil

    env = {**os.environ, "TEXTDISTILL_CACHE": str(fresh_cache(tmp_path))}  # nothing cached: the cells take a while
    workers = []
    driver = subprocess.Popen([sys.executable, "-m", "textdistill.cli", "bench", str(tiny_suite_file(tmp_path)),
                               "--out", str(tmp_path / "out"), "--workers", "2"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while len(workers) < 2 and time.time() < deadline and driver.poll() is None:
            time.sleep(0.2)
            try:
                workers = [p for p in psutil.Process(driver.pid).children()
                           if "spawn_main" in " ".join(p.cmdline())]
            except psutil.Error:
                continue
        assert len(workers) == 2, "the workers never started"
        time.sleep(3)  # mid-start-up or at work: either way they must follow the driver
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        gone, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, f"workers {[p.pid for p in alive]} outlived their driver"
    finally:
        driver.kill()
        for p in workers:  # the orphans of a failed run are no longer our children: killed by their ids
            try:
                p.kill()
            except psutil.Error:
                pass


def test_a_worker_draws_no_progress_bars(tmp_path):
    """--workers: the driver's bar counts the cells, and the workers' bars would interleave with it, so a worker
    process draws none of the package's bars, also one asked for with ``disable=False`` (as methods and learners
    do: a TQDM_DISABLE set by the worker would not stop those, nor any bar of a tqdm imported before it was set)."""
    draw = ("import sys\nfrom textdistill.progress import bar as tqdm\n"
            "for bar in (tqdm(range(3), desc='bar-plain'), tqdm(range(3), desc='bar-asked', disable=False)):\n"
            "    list(bar)\n"
            "print('drawn', file=sys.stderr)\n")
    alone = subprocess.run([sys.executable, "-c", draw], capture_output=True, text=True, timeout=60)
    assert "bar-plain" in alone.stderr and "bar-asked" in alone.stderr  # a pipe is no reason for tqdm to stay quiet
    worker = subprocess.run([sys.executable, "-c", (
        "import os\nfrom textdistill.bench import load_suite\nfrom textdistill.bench.executors import _start_worker\n"
        f"_start_worker(load_suite({str(tiny_suite_file(tmp_path))!r}), {str(tmp_path / 'out')!r}, 'cpu', 1, "
        "os.getppid())\n" + draw)], capture_output=True, text=True, timeout=120)
    assert worker.returncode == 0, worker.stderr
    assert "drawn" in worker.stderr and "bar-" not in worker.stderr, worker.stderr


def test_workers_are_capped_at_the_cores(tmp_path, monkeypatch, capsys):
    import json

    from textdistill.bench import driver, executors
    from textdistill.cli import main

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cores < 2:
        pytest.skip("one core: every --workers runs the cells in this process")
    asked = []

    def processes(workers):
        asked.append(workers)
        return executors.run_here  # the cells in this process: what is checked is how many processes were asked for

    monkeypatch.setattr(driver, "run_in_processes", processes)
    monkeypatch.setenv("TEXTDISTILL_CACHE", str(fresh_cache(tmp_path)))
    suite = tiny_suite_file(tmp_path, methods=["random"], dpc=[1])
    assert main(["bench", str(suite), "--out", str(tmp_path / "out"), "--workers", "999"]) == 0
    assert asked == [cores]
    assert f"--workers 999 is more than the {cores} cores" in capsys.readouterr().err
    docs = [json.loads(p.read_text()) for p in (tmp_path / "out" / "cells").glob("*.json")]
    assert docs and {d["workers"] for d in docs} == {cores}
