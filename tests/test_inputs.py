"""Bad inputs: refused up front with one clear line, never a silent wrong answer or a traceback."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from textdistill.cli import build_parser, main
from textdistill.data import get_task, load_file_task
from textdistill.errors import ArtifactError, ConfigError, DataError
from textdistill.evaluation import evaluate
from textdistill.learners import get_learner
from textdistill.methods import get_method
from textdistill.train import Recipe


def csv_file(path, labels, texts=None):
    texts = texts or [f"sentence number {i}" for i in range(len(labels))]
    path.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in zip(texts, labels)))
    return path


@pytest.fixture(scope="module")
def random_set(mr_small):
    return get_method("random").distill(mr_small, 2, get_learner("minilm-frozen"))


# Item 2: silent wrong answers


def test_evaluate_refuses_a_set_whose_classes_differ_from_the_task(tmp_path, random_set):
    three = load_file_task(csv_file(tmp_path / "d.csv", ["a", "b", "c"] * 4), test_size=0.5)
    with pytest.raises(ArtifactError, match=r"\['negative', 'positive'\].*\['a', 'b', 'c'\]"):
        evaluate(three, random_set, ["minilm-frozen"], seeds=1)


def test_same_classes_other_task_still_evaluates(tmp_path, random_set, check_accuracy):
    other = load_file_task(csv_file(tmp_path / "d.csv", ["negative", "positive"] * 4), test_size=0.5)
    (r,) = evaluate(other, random_set, ["minilm-frozen"], seeds=1, recipe={"steps": 1}, cache=False, progress=False)
    check_accuracy(other, random_set, r)


@pytest.mark.parametrize("marker", ["NaN", "nan", "None", "", "null"])
def test_missing_label_markers_are_refused_with_their_lines(tmp_path, marker):
    f = csv_file(tmp_path / "d.csv", ["pos", "neg", marker, "pos", marker, "neg"])
    with pytest.raises(DataError, match=r"d.csv: missing value in label column 'label' at lines 4, 6"):
        load_file_task(f)


def test_integer_valued_floats_and_ints_are_one_class(tmp_path):
    task = load_file_task(csv_file(tmp_path / "d.csv", ["1", "1.0", "0", "0.0"] * 3), test_size=0.5)
    assert task.spec.classes == ("0", "1")


def test_parquet_integer_labels_stay_integers_sorted_numerically(tmp_path):
    f = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": [f"t {i}" for i in range(12)], "label": [10, 2] * 6}), f)
    assert load_file_task(f, test_size=0.5).spec.classes == ("2", "10")


@pytest.mark.parametrize("labels, message", [
    ([0.5, 1.5] * 3, r"d.parquet:2: label 0.5 in 'label' is a fractional number"),
    ([[0], [1]] * 3, r"d.parquet:2: label \[0\] in 'label' is a list"),
    ([0.0, None] * 3, r"missing value in label column 'label' at lines 3, 5, 7"),
    ([0.0, float("nan")] * 3, r"missing value in label column 'label' at lines 3, 5, 7"),
])
def test_parquet_label_column_types(tmp_path, labels, message):
    f = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": [f"t {i}" for i in range(6)], "label": labels}), f)
    with pytest.raises(DataError, match=message):
        load_file_task(f)


def test_non_string_text_column_is_refused(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps({"text": t, "label": "x" if i % 2 else "y"}) + "\n"
                         for i, t in enumerate(["a", "b", 3, "d"])))
    with pytest.raises(DataError, match=r"d.jsonl:3: 'text' is a int \(3\), expected text"):
        load_file_task(f)
    g = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": [[1, 2]] * 4, "label": ["x", "y"] * 2}), g)
    with pytest.raises(DataError, match=r"d.parquet:2: 'text' is a list"):
        load_file_task(g)


def test_benchmark_layout_labels_are_read_by_type(tmp_path):
    for split, labels in (("train", [0, 1.0, 1, 0]), ("test", [1, None])):
        (tmp_path / f"{split}.jsonl").write_text(
            "".join(json.dumps({"text": f"review {i}", "label": y}) + "\n" for i, y in enumerate(labels)))
    with pytest.raises(DataError, match=r"test.jsonl: missing value in label column 'label' at line 2 "):
        get_task("imdb", data_dir=tmp_path)
    (tmp_path / "test.jsonl").write_text(json.dumps({"text": "fine", "label": 1.0}) + "\n")
    assert get_task("imdb", data_dir=tmp_path).columns("train")[2] == [0, 1, 1, 0]


@pytest.mark.parametrize("text, value", [("true", True), ("Yes", True), ("1", True), ("NO", False), ("0", False),
                                         (False, False), (1, True)])
def test_boolean_options_accept_the_usual_spellings(text, value):
    assert get_method("dc", classifier_only=text).config.classifier_only is value


@pytest.mark.parametrize("text", ["ture", "2", 2, "", None])
def test_boolean_options_refuse_anything_else(text):
    with pytest.raises(ConfigError, match=r"classifier_only \(--classifier-only\) must be true or false"):
        get_method("dc", classifier_only=text)


def test_cli_boolean_option_typo_is_an_error(tmp_path, capsys):
    f = csv_file(tmp_path / "d.csv", ["neg", "pos"] * 6)
    assert main(["distill", "--task", str(f), "--method", "dc", "--classifier-only", "ture", "--dpc", "1",
                 "--out", str(tmp_path / "o")]) == 2
    assert "classifier_only (--classifier-only) must be true or false" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("seeds", [0, -2])
def test_evaluate_refuses_no_seeds(mr_small, random_set, seeds):
    with pytest.raises(ConfigError, match="seeds must be >= 1"):
        evaluate(mr_small, random_set, ["minilm-frozen"], seeds=seeds)


def test_unknown_learner_is_refused_with_the_known_ones(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"unknown learner 'minilm-frozn'.*network.*minilm-frozen"):
        get_learner("minilm-frozn")
    with pytest.raises(ConfigError, match="no config.json"):
        get_learner(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    assert get_learner(str(tmp_path)).name == str(tmp_path)  # a local model folder is fine (loaded later)
    f = csv_file(tmp_path / "d.csv", ["neg", "pos"] * 6)
    for method in ("random", "kmeans"):
        assert main(["distill", "--task", str(f), "--method", method, "--learner", "rnadom", "--dpc", "1",
                     "--out", str(tmp_path / "o")]) == 2
        assert "unknown learner 'rnadom'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# Item 4: one-line errors instead of tracebacks


def test_a_class_with_one_example_cannot_be_split(tmp_path):
    f = csv_file(tmp_path / "d.csv", ["neg", "pos"] * 5 + ["odd"])
    with pytest.raises(DataError, match=r"d.csv: a stratified split needs at least 2 examples of each class; 'odd' has 1"):
        load_file_task(f)


@pytest.mark.parametrize("method, options", [
    ("kmeans", {"n_init": 0}), ("kmeans", {"n_init": -3}), ("kmeans", {"n_init": "many"}),
    ("dm", {"outer_lr": -1.0}), ("dm", {"iterations": 0}), ("dc", {"real_batch": 0}), ("mtt", {"expert_lr": 0.0}),
    ("bptt", {"init_lr": 0.0}), ("bptt", {"chunk": 0}), ("dilm", {"top_p": 1.5}), ("dilm", {"gen_batch": 0}),
])
def test_config_values_out_of_range(method, options):
    (name, value), = options.items()
    with pytest.raises(ConfigError, match=rf"{name} \(--{name.replace('_', '-')}\) must be"):
        get_method(method, **options)


def test_cli_n_init_zero_is_one_line(tmp_path, capsys):
    f = csv_file(tmp_path / "d.csv", ["neg", "pos"] * 6)
    assert main(["distill", "--task", str(f), "--method", "kmeans", "--n-init", "0", "--dpc", "1",
                 "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("error: KMeansConfig: n_init (--n-init) must be >= 1, got 0")


@pytest.mark.parametrize("size", [0.0, 1.0, 1.5, -0.2])
def test_test_size_must_be_a_fraction(tmp_path, size):
    with pytest.raises(ConfigError, match=r"--test-size.*between 0 and 1"):
        load_file_task(csv_file(tmp_path / "d.csv", ["neg", "pos"] * 6), test_size=size)


def test_a_directory_as_data_file(tmp_path, capsys):
    (tmp_path / "data.csv").mkdir()
    with pytest.raises(DataError, match=r"data.csv: is a directory, not a data file"):
        load_file_task(tmp_path / "data.csv")
    assert main(["evaluate", "--task", str(tmp_path), "--full"]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_cuda_without_cuda_is_refused_before_work(mr_small, random_set, monkeypatch, tmp_path):
    from textdistill.bench import load_suite, run_suite

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="cuda.*not available"):
        evaluate(mr_small, random_set, ["minilm-frozen"], seeds=1, device="cuda")
    with pytest.raises(ConfigError, match="cuda.*not available"):
        get_method("dm").distill(mr_small, 1, get_learner("minilm-frozen"), device="cuda")
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        get_method("dm").distill(mr_small, 1, get_learner("minilm-frozen"), device="gpu")
    with pytest.raises(ConfigError, match="unknown option.*device"):
        get_method("dm", device="cpu")  # not a method option: an argument of distill
    suite = tmp_path / "s.yaml"
    data = csv_file(tmp_path / "d.csv", ["neg", "pos"] * 6)
    suite.write_text(f"tasks: [{data}]\nlearners: [minilm-frozen]\nmethods: [herding]\ndpc: [1]\nseeds: 1\n")
    with pytest.raises(ConfigError, match="cuda.*not available"):
        run_suite(load_suite(suite), tmp_path / "out", device="cuda")
    assert not (tmp_path / "out" / "cells").exists()


def test_unknown_learners_fail_before_any_run(mr_small, random_set, tmp_path):
    from textdistill.bench import load_suite, run_suite

    with pytest.raises(ConfigError, match="unknown learner 'textcnn-glov'"):
        evaluate(mr_small, random_set, ["minilm-frozen", "textcnn-glov"], seeds=1)
    suite = tmp_path / "s.yaml"
    data = csv_file(tmp_path / "d.csv", ["neg", "pos"] * 6)
    suite.write_text(f"tasks: [{data}]\nlearners: [minilm-frozen, textcnn-glov]\nmethods: [herding]\ndpc: [1]\n")
    with pytest.raises(ConfigError, match="unknown learner 'textcnn-glov'"):
        run_suite(load_suite(suite), tmp_path / "out")
    assert not (tmp_path / "out" / "cells").exists()


def test_batch_size_and_steps_must_be_positive(tmp_path, capsys):
    for bad in ({"batch_size": 0}, {"batch_size": -1}, {"steps": -5}, {"lr": -1.0}):
        with pytest.raises(ConfigError, match="recipe needs"):
            Recipe(**bad)
    f = csv_file(tmp_path / "d.csv", ["neg", "pos"] * 6)
    assert main(["evaluate", "--task", str(f), "--full", "--learner", "minilm-frozen", "--batch-size", "0"]) == 2
    assert "batch_size" in capsys.readouterr().err


# Item 7: ergonomics


def test_version(capsys):
    from textdistill import __version__

    with pytest.raises(SystemExit):
        main(["--version"])
    assert __version__ in capsys.readouterr().out


def test_every_argument_has_help():
    import argparse

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {a.dest}" for name, sub in subparsers.choices.items() for a in sub._actions
               if not a.help]
    assert missing == []
    evaluate_help = subparsers.choices["evaluate"].format_help()
    assert "fine-tuned" in evaluate_help and "minilm" in evaluate_help and "minutes" in evaluate_help
    assert "from 0" in " ".join(subparsers.choices["bench"].format_help().split())  # however argparse wraps


def test_list_methods_keeps_names_apart(capsys):
    assert main(["list", "methods", "--options"]) == 0
    out = capsys.readouterr().out
    assert "attention-labels  " in out
    assert "(default )" not in out and "(default: none)" in out and "(default: 10)" in out


def test_progress_bar_while_encoding(capsys):
    learner = get_learner("minilm")
    learner._sentence_vectors([f"sentence {i}" for i in range(300)], None)
    assert "encode" in capsys.readouterr().err


def test_progress_bar_inside_expert_training(mr_small, tmp_path, capsys):
    from textdistill.methods.mtt import MTTConfig, buffer

    cfg = MTTConfig(experts=1, expert_epochs=2, max_start_epoch=1, match_epochs=1, buffer_dir=str(tmp_path))
    buffer(mr_small, get_learner("minilm-frozen"), cfg)
    assert "expert 1/1" in capsys.readouterr().err


def test_a_csv_cell_over_the_csv_field_limit_loads(tmp_path):
    long = "word " * 40_000  # 200,000 characters: over the csv module's default 131,072
    task = load_file_task(csv_file(tmp_path / "d.csv", ["neg", "pos"] * 3, [long] + ["short"] * 5), test_size=0.5)
    assert max(len(t) for t in task.columns("train")[0] + task.columns("test")[0]) == len(long.strip())
