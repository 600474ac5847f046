"""Nothing lost, every error clear: false all-clears, lost data and silent wrong behaviour found by trials."""

import csv
import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from textdistill.cli import main
from textdistill.data import get_task
from textdistill.distilled import DistilledDataset
from textdistill.errors import ArtifactError, ConfigError


def write_csv(path, texts, labels):
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(zip(texts, labels))
    return path


@pytest.fixture(scope="module")
def mr_rows():
    task = get_task("mr").subset(train_per_class=12, test_size=10, seed=0)
    texts, _, labels = task.columns("train")
    return texts, [task.spec.classes[y] for y in labels]


def text_set(texts, labels, names=("negative", "positive"), **task):
    return DistilledDataset(kind="text", texts=list(texts), labels=torch.tensor([names.index(y) for y in labels]),
                            label_names=list(names), method="test", task=task)


def tree_bytes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- audit: the set's own task, or a clear refusal --------------------------------------------------------------
def test_audit_refuses_a_task_with_other_classes_and_warns_on_other_data(tmp_path, mr_rows, capsys):
    texts, labels = mr_rows
    own = write_csv(tmp_path / "own.csv", texts, labels)
    task = get_task(str(own))
    train_texts, _, train_y = task.columns("train")
    picked = [train_y.index(0), train_y.index(1), len(train_y) - 1 - train_y[::-1].index(0)]
    picked.append(len(train_y) - 1 - train_y[::-1].index(1))  # four training texts: every one a verbatim copy
    ds = text_set([train_texts[i] for i in picked], [task.spec.classes[train_y[i]] for i in picked],
                  **task.describe())
    ds.save(tmp_path / "set")
    five = write_csv(tmp_path / "five.csv", texts, [f"c{i % 5}" for i in range(len(texts))])
    two = write_csv(tmp_path / "two.csv", texts[:20], ["x", "y"] * 10)
    for other in (five, two):
        assert main(["audit", str(tmp_path / "set"), "--task", str(other)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "classes" in err and "negative" in err and err.count("\n") == 1
    # the same classes, other data: audited, with a warning that the numbers are not about the set's own task
    other = write_csv(tmp_path / "other.csv", texts[::-1][:20], labels[::-1][:20])
    assert main(["audit", str(tmp_path / "set"), "--task", str(other)]) == 0
    assert "warning: task other has fingerprint" in capsys.readouterr().err
    assert main(["audit", str(tmp_path / "set"), "--task", str(own)]) == 0
    captured = capsys.readouterr()
    assert "4 of 4 examples are verbatim" in captured.out and "warning" not in captured.err
    # a DP set records no fingerprint of its data: nothing to compare, no warning
    manifest = tmp_path / "set" / "manifest.json"
    m = json.loads(manifest.read_text())
    m["task"].pop("fingerprint")
    manifest.write_text(json.dumps(m))
    assert main(["audit", str(tmp_path / "set"), "--task", str(other)]) == 0
    assert "warning" not in capsys.readouterr().err


# -- decode never writes over its own input --------------------------------------------------------------------
def test_decode_refuses_an_output_that_is_or_holds_its_input(tmp_path, capsys):
    ds = DistilledDataset(kind="token-embeddings", labels=torch.tensor([0, 1]), label_names=["a", "b"],
                          bound_to={"id": "textcnn-glove"}, method="test",
                          tensors={"inputs_embeds": torch.randn(2, 3, 50), "attention_mask": torch.ones(2, 3)})
    ds.save(tmp_path / "set")
    before = tree_bytes(tmp_path / "set")
    (tmp_path / "sub").mkdir()
    for out in (tmp_path / "set", tmp_path / "sub" / ".." / "set", tmp_path / "set" / "inner", tmp_path):
        assert main(["decode", str(tmp_path / "set"), "--out", str(out), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert "error: " in err and str(tmp_path / "set") in err and "--out" in err
    (tmp_path / "link").symlink_to(tmp_path / "set")
    assert main(["decode", str(tmp_path / "link"), "--out", str(tmp_path / "set"), "--overwrite"]) == 2
    assert tree_bytes(tmp_path / "set") == before


# -- saving without --overwrite is exclusive -------------------------------------------------------------------
@pytest.fixture(params=["renameat2", "mkdir"])
def exclusive_rename(request, monkeypatch):
    """Both ways a new set is put in place: Linux's renameat2, and where it is missing a mkdir claim."""
    from textdistill import distilled

    if request.param == "mkdir":
        monkeypatch.setattr(distilled, "_renameat2", lambda: None)
    else:
        assert distilled._renameat2() is not None
    return request.param


def test_writers_racing_to_one_new_path_one_wins_the_others_are_told(tmp_path, monkeypatch, exclusive_rename):
    from textdistill import distilled

    target, n = tmp_path / "out", 8
    everyone_written = threading.Barrier(n)
    real_temp_folder = distilled.temp_folder

    def slow_temp_folder(near, write):  # every writer has checked --out and written its files before any rename
        folder = real_temp_folder(near, write)
        everyone_written.wait(timeout=30)
        return folder

    monkeypatch.setattr(distilled, "temp_folder", slow_temp_folder)
    results: dict[int, object] = {}

    def save(i):
        try:
            text_set([f"writer {i} text {j}" for j in range(2)], ["negative", "positive"]).save(target)
            results[i] = "saved"
        except ArtifactError as e:
            results[i] = e

    threads = [threading.Thread(target=save, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, r in results.items() if r == "saved"]
    assert len(winners) == 1, results
    for i, r in results.items():
        if i not in winners:
            assert isinstance(r, ArtifactError) and str(target) in str(r) and "--out" in str(r)
    assert DistilledDataset.load(target).texts == [f"writer {winners[0]} text {j}" for j in range(2)]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp folder left


def test_a_folder_that_appears_while_saving_is_never_replaced(tmp_path, monkeypatch, exclusive_rename):
    from textdistill import distilled

    real_temp_folder = distilled.temp_folder

    def someone_else_mkdirs(near, write):
        folder = real_temp_folder(near, write)
        near.mkdir()  # an empty folder (a rename onto it would succeed)
        return folder

    monkeypatch.setattr(distilled, "temp_folder", someone_else_mkdirs)
    with pytest.raises(ArtifactError, match="appeared"):
        text_set(["a b c", "d e f"], ["negative", "positive"]).save(tmp_path / "out")
    assert (tmp_path / "out").is_dir() and not any((tmp_path / "out").iterdir())
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# -- cache clear lets running jobs finish ----------------------------------------------------------------------
@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    from textdistill.cache import INPUTS
    from textdistill.resources import cache_dir

    cache = tmp_path / "cache"
    cache.mkdir()
    for kind in INPUTS:
        (cache / kind).symlink_to(cache_dir() / kind)
    monkeypatch.setenv("TEXTDISTILL_CACHE", str(cache))
    return cache


def test_cache_clear_during_an_mtt_run_keeps_what_the_run_uses(own_cache, mr_small, monkeypatch, capsys):
    from textdistill.learners import get_learner
    from textdistill.methods import get_method, mtt

    real_train_expert = mtt.train_expert
    codes = []

    def clear_after_the_first_expert(*args, **kwargs):
        real_train_expert(*args, **kwargs)
        if not codes:
            codes.append(main(["cache", "clear", "--kind", "trajectories"]))
            codes.append(main(["cache", "clear"]))

    monkeypatch.setattr(mtt, "train_expert", clear_after_the_first_expert)
    method = get_method("mtt", experts=2, expert_epochs=3, max_start_epoch=1, match_epochs=2, iterations=2,
                        syn_steps=2, eval_steps=2)
    ds = method.distill(mr_small, 1, get_learner("minilm-frozen"), seed=0)
    assert len(ds) == 2 and codes == [0, 0]
    captured = capsys.readouterr()
    assert "trajectories" in captured.err and "in use" in captured.err
    assert len(list((own_cache / "trajectories").rglob("expert-*.safetensors"))) == 2
    assert main(["cache", "clear", "--kind", "trajectories"]) == 0  # nothing runs now: cleared
    assert not (own_cache / "trajectories").exists()


# -- two suites never share one --out ---------------------------------------------------------------------------
def test_bench_refuses_an_out_that_holds_another_suite(tmp_path, monkeypatch):
    from textdistill.bench import Runner, parse_suite, run_suite

    monkeypatch.setattr(Runner, "run_cell", lambda self, cell: [])
    raw = {"tasks": ["mr"], "learners": ["minilm-frozen"], "methods": ["random"], "dpc": [1]}
    first, second = parse_suite({**raw, "name": "first"}), parse_suite({**raw, "name": "second"})
    run_suite(first, tmp_path, progress=False)
    before = (tmp_path / "suite.json").read_bytes()
    with pytest.raises(ConfigError, match=f"{tmp_path}.*suite first.*--out"):
        run_suite(second, tmp_path, progress=False)
    assert (tmp_path / "suite.json").read_bytes() == before
    run_suite(first, tmp_path, progress=False)  # the same suite resumes
    run_suite(first.evaluated_with(seeds=2), tmp_path, progress=False)  # and takes overrides


def test_two_suites_started_at_once_into_one_out_one_is_refused(tmp_path, monkeypatch):
    from textdistill.bench import Runner, parse_suite, run_suite

    monkeypatch.setattr(Runner, "run_cell", lambda self, cell: [])
    raw = {"tasks": ["mr"], "learners": ["minilm-frozen"], "methods": ["random"], "dpc": [1]}
    suites = [parse_suite({**raw, "name": f"s{i}"}) for i in range(4)]
    all_started = threading.Barrier(len(suites))
    # every run has passed its first checks before any looks at OUT
    monkeypatch.setattr("textdistill.bench.driver.check_device", lambda device: all_started.wait(timeout=30))
    outcome = {}

    def run(suite):
        try:
            run_suite(suite, tmp_path, progress=False)
            outcome[suite.name] = "ran"
        except ConfigError as e:
            outcome[suite.name] = str(e)

    threads = [threading.Thread(target=run, args=(s,)) for s in suites]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ran = [name for name, r in outcome.items() if r == "ran"]
    assert len(ran) == 1, outcome
    assert json.loads((tmp_path / "suite.json").read_text())["name"] == ran[0]
    assert json.loads((tmp_path / "results.json").read_text())["suite"]["name"] == ran[0]


# -- condense: no empty generation is cached; a silent endpoint says so -----------------------------------------
def test_an_empty_generation_is_never_cached(own_cache):
    from textdistill.lm import cached_generate

    class Endpoint:
        name = "openai:http://x/v1/m"
        replies = [["", "  "], ["A new sentence of the class."] * 2]
        asked = 0

        def generate(self, prompt, n, max_new_tokens=40, seed=0):
            Endpoint.asked += 1
            return self.replies.pop(0)

    lm = Endpoint()
    assert cached_generate(lm, "write", 2, 20, 0) == ["", "  "]
    assert cached_generate(lm, "write", 2, 20, 0) == ["A new sentence of the class."] * 2  # asked again
    assert cached_generate(lm, "write", 2, 20, 0) == ["A new sentence of the class."] * 2  # now cached
    assert Endpoint.asked == 2


class Silent(BaseHTTPRequestHandler):
    def do_POST(self):
        time.sleep(1.5)  # longer than any timeout the test gives

    def log_message(self, *args):
        pass


@pytest.fixture
def silent_endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Silent)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_a_silent_endpoint_reports_every_retry_and_obeys_the_timeout_options(tmp_path, mr_rows, silent_endpoint,
                                                                             own_cache, capsys):
    texts, labels = mr_rows
    data = write_csv(tmp_path / "d.csv", texts, labels)
    t0 = time.time()
    code = main(["distill", "--task", str(data), "--method", "condense", "--dpc", "1", "--out", str(tmp_path / "o"),
                 "--learner", "minilm-frozen", "--llm", f"openai:{silent_endpoint}/m", "--llm-timeout", "0.3",
                 "--llm-retries", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "failed 2 times" in err and "APITimeoutError" in err
    retries = [line for line in err.splitlines() if "retry" in line]
    assert len(retries) == 1 and "attempt 1 of 2" in retries[0] and "APITimeoutError" in retries[0]
    assert time.time() - t0 < 60 and not (tmp_path / "o").exists()
    for bad in (["--llm-timeout", "0"], ["--llm-retries", "-1"], ["--llm-timeout", "inf"]):
        assert main(["distill", "--task", str(data), "--method", "condense", "--dpc", "1", "--out",
                     str(tmp_path / "o"), *bad]) == 2
        assert "llm_" in capsys.readouterr().err


# -- numbers that mean nothing are refused -----------------------------------------------------------------------
@pytest.mark.parametrize("options, what", [
    ({"dp_epsilon": math.inf}, "dp_epsilon"), ({"dp_epsilon": math.nan}, "dp_epsilon"),
    ({"dp_epsilon": -1.0}, "dp_epsilon"), ({"dp_delta": 1.0}, "dp_delta"), ({"dp_delta": math.nan}, "dp_delta"),
    ({"dp_delta": -0.1}, "dp_delta"), ({"dp_clip": math.inf}, "dp_clip"),
])
def test_dp_options_must_be_finite_and_in_range(options, what):
    from textdistill.methods import get_method

    with pytest.raises(ConfigError, match=what):
        get_method("dm", init="noise", **options)
    get_method("dm", init="noise", dp_epsilon=0.0, dp_delta=0.0)  # off, and the default delta
    get_method("dm", init="noise", dp_epsilon=4.0, dp_delta=1e-6)


def test_dp_epsilon_inf_is_refused_on_the_command_line(tmp_path, capsys, monkeypatch):
    def no_work(*_):
        raise AssertionError("the task was loaded with an unchecked epsilon")

    monkeypatch.setattr("textdistill.cli._load_task", no_work)
    assert main(["distill", "--task", "mr", "--method", "dm", "--dpc", "1", "--out", str(tmp_path / "o"),
                 "--init", "noise", "--dp-epsilon", "inf"]) == 2
    assert "dp_epsilon" in capsys.readouterr().err


@pytest.mark.parametrize("values", [{"lr": math.nan}, {"lr": math.inf}, {"lr": 0.0}, {"steps": 0},
                                    {"warmup": math.nan}, {"weight_decay": math.inf}, {"weight_decay": -1.0},
                                    {"eps": 0.0}, {"betas": (0.9, 1.0)}, {"batch_size": 0}, {"steps": 2.5},
                                    {"lr": "fast"}, {"loss_options": {"weight": math.nan}}, {"loss": ""}])
def test_recipe_values_are_checked(values):
    from textdistill.recipe import Recipe

    with pytest.raises(ConfigError, match="recipe"):
        Recipe(**values)


def test_evaluate_refuses_a_nan_or_inf_lr_before_training(tmp_path, mr_rows, monkeypatch, capsys):
    texts, labels = mr_rows
    data = write_csv(tmp_path / "d.csv", texts, labels)

    def no_training(*a, **kw):
        raise AssertionError("trained with a recipe that was not checked")

    monkeypatch.setattr("textdistill.evaluation.train", no_training)
    for lr in ("nan", "inf", "-1"):
        assert main(["evaluate", "--task", str(data), "--full", "--learner", "minilm-frozen", "--seeds", "1",
                     "--lr", lr, "--no-cache"]) == 2
        err = capsys.readouterr().err
        assert "lr" in err and err.startswith("error: ")


def test_show_refuses_a_negative_limit(tmp_path, capsys):
    text_set(["one two three", "four five six", "seven", "eight"], ["negative", "positive"] * 2).save(tmp_path / "s")
    assert main(["show", str(tmp_path / "s"), "--limit", "-1"]) == 2
    assert "--limit" in capsys.readouterr().err
    assert main(["show", str(tmp_path / "s"), "--width", "-5"]) == 2
    assert "--width" in capsys.readouterr().err
    assert main(["show", str(tmp_path / "s"), "--limit", "0"]) == 0


# -- data files: what the user did not mean ----------------------------------------------------------------------
def test_a_test_file_copied_from_train_is_warned_about(tmp_path, mr_rows, capsys):
    texts, labels = mr_rows
    train = write_csv(tmp_path / "train.csv", texts, labels)
    test = write_csv(tmp_path / "test.csv", [t.upper() for t in texts[:6]] + ["an unseen sentence", "another one"],
                     labels[:6] + labels[:2])
    get_task(str(train), test_file=str(test))
    err = capsys.readouterr().err
    assert "warning" in err and "6 of 8" in err and str(test) in err
    clean = write_csv(tmp_path / "clean.csv", ["an unseen sentence", "another one"], labels[:2])
    get_task(str(train), test_file=str(clean))
    assert "warning" not in capsys.readouterr().err


def test_labels_that_differ_only_in_case_or_spacing_are_named(tmp_path, capsys):
    path = write_csv(tmp_path / "d.csv", [f"text number {i}" for i in range(20)], ["POS", "pos", "neg", "Neg"] * 5)
    task = get_task(str(path))
    err = capsys.readouterr().err
    assert task.spec.classes == ("Neg", "POS", "neg", "pos")  # kept apart, as written, but said
    assert "warning" in err and "'POS'" in err and "'pos'" in err and "'Neg'" in err and str(path) in err
    path = write_csv(tmp_path / "e.csv", [f"text number {i}" for i in range(10)], ["pos", "neg"] * 5)
    get_task(str(path))
    assert "warning" not in capsys.readouterr().err


# -- a crafted set of the wrong width --------------------------------------------------------------------------
def test_a_set_of_the_wrong_width_is_refused_by_name(tmp_path, mr_rows, capsys):
    texts, labels = mr_rows
    data = write_csv(tmp_path / "d.csv", texts, labels)
    names = ["negative", "positive"]
    features = DistilledDataset(kind="features", labels=torch.tensor([0, 1]), label_names=names, method="test",
                                bound_to={"id": "minilm-frozen"}, tensors={"features": torch.randn(2, 7)})
    features.save(tmp_path / "features")
    tokens = DistilledDataset(kind="token-embeddings", labels=torch.tensor([0, 1]), label_names=names,
                              bound_to={"id": "textcnn-glove"}, method="test",
                              tensors={"inputs_embeds": torch.randn(2, 3, 9), "attention_mask": torch.ones(2, 3)})
    tokens.save(tmp_path / "tokens")
    for folder, learner, tensor, width, expected in (("features", "minilm-frozen", "examples.features", 7, 384),
                                                     ("tokens", "textcnn-glove", "examples.inputs_embeds", 9, 50)):
        where = str(tmp_path / folder / "tensors.safetensors")
        commands = [["evaluate", str(tmp_path / folder), "--learner", learner, "--seeds", "1", "--no-cache"],
                    ["audit", str(tmp_path / folder)]]
        if folder == "tokens":  # show prints a vector set's labels only; a token set's nearest tokens
            commands.append(["show", str(tmp_path / folder)])
        for command in commands:
            assert main([*command, "--task", str(data)]) == 2, command
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and where in err and tensor in err, (command, err)
            assert f"width {width}" in err and str(expected) in err, (command, err)
    assert main(["decode", str(tmp_path / "tokens"), "--out", str(tmp_path / "text")]) == 2
    assert "examples.inputs_embeds" in capsys.readouterr().err and not (tmp_path / "text").exists()
