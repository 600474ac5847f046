"""Data-parallel distillation: a 2-process gloo run under torchrun (or accelerate launch) equals the 1-process run."""

import json
import os
import socket
import subprocess
import sys

import pytest
from safetensors.torch import load_file
import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_task(tmp_path):
    data = tmp_path / "task.csv"
    rows = [(f"a fine warm funny film number {i}", "pos") if i % 2 else (f"a dull tired film number {i}", "neg")
            for i in range(48)]
    data.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    return data


def two_ranks(args: list[str], env: dict, accelerate: bool = False) -> None:
    """Two ranks of ``textdistill.cli args`` under torchrun, or under ``accelerate launch`` (whose ``--cpu`` starts
    one process: ``--multi_gpu`` is its multi-process launcher, gloo on a machine without GPUs)."""
    launcher = (["accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                 "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
                if accelerate else ["torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())])
    run = subprocess.run([sys.executable, "-m", *launcher, "-m", "textdistill.cli", *args], env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]


def assert_split(manifest_path) -> None:
    """Each rank took its own half of the real rows (or experts): both worked, neither did it all."""
    shares = json.loads(manifest_path.read_text())["provenance"]["data_parallel_work"]
    assert len(shares) == 2 and min(shares) > 0 and abs(shares[0] - shares[1]) <= max(shares) // 2, shares


DM = ["--iterations", "3", "--real-batch", "10", "--kernel", "mmd"]


@pytest.mark.parametrize("method, learner, options, launcher", [
    ("dm", "minilm-frozen", DM, "torchrun"),
    ("dm", "minilm-frozen", DM, "accelerate"),
    ("dc", "textcnn-glove", ["--outer-loops", "2", "--inner-loops", "2", "--length", "8", "--real-batch", "10"],
     "torchrun"),
    ("mtt", "minilm-frozen", ["--iterations", "3", "--experts", "2", "--expert-epochs", "2", "--max-start-epoch", "1",
                              "--match-epochs", "1", "--syn-steps", "3", "--buffer-dir", "{buffer}"], "torchrun"),
])
def test_two_ranks_equal_one_process(tmp_path, method, learner, options, launcher):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = ["distill", "--task", str(write_task(tmp_path)), "--method", method, "--dpc", "2", "--learner", learner]

    def own(run):  # mtt: each run trains its experts into its own buffer (the 2-rank run one expert per rank)
        return [o.format(buffer=tmp_path / f"buffer-{run}") for o in options] + ["--out", str(tmp_path / run)]

    subprocess.run([sys.executable, "-m", "textdistill.cli", *command, *own("one")], env=env, check=True,
                   capture_output=True)
    two_ranks([*command, *own("two")], env, accelerate=launcher == "accelerate")
    one, two = load_file(tmp_path / "one" / "tensors.safetensors"), load_file(tmp_path / "two" / "tensors.safetensors")
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=1e-5, rtol=1e-4)
    assert_split(tmp_path / "two" / "manifest.json")


def test_two_ranks_train_the_dilm_generator_like_one_process(tmp_path, tiny_generator):
    """Both stages: stage 1 (every rank its rows of each LM batch, summed gradients, one cache written by rank 0)
    and stage 2 (sharded real gradients); the saved generators agree. Each run has its own cache, so both train."""
    command = ["distill", "--task", str(write_task(tmp_path)), "--method", "dilm", "--dpc", "2", "--learner",
               "minilm-frozen", "--generator", tiny_generator, "--max-length", "12", "--lm-steps", "3",
               "--lm-batch", "5", "--outer-loops", "1", "--inner-loops", "2", "--learner-steps", "1",
               "--syn-batch", "3", "--real-batch", "7", "--teacher-size", "6", "--pool-factor", "2"]

    def own(run):
        return ["--save-generator", str(tmp_path / f"gen-{run}"), "--out", str(tmp_path / run)]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "textdistill.cli", *command, *own("one")], check=True, capture_output=True,
                   env={**env, "TEXTDISTILL_CACHE": str(tmp_path / "cache-one")})
    two_ranks([*command, *own("two")], {**env, "TEXTDISTILL_CACHE": str(tmp_path / "cache-two")})
    one, two = (load_file(next((tmp_path / f"gen-{run}").glob("*.safetensors"))) for run in ("one", "two"))
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=1e-5, rtol=1e-4)
    assert len(list((tmp_path / "cache-two" / "generators").glob("*/*.safetensors"))) == 1
    assert_split(tmp_path / "two" / "manifest.json")


def test_bench_under_torchrun_distils_the_suites_sets_data_parallel(tmp_path, monkeypatch, capsys):
    """`torchrun ... bench SUITE --distill-only`: every learned set distilled by both ranks together, written
    once, equal to a one-process run's; a later plain or Ray bench evaluates them. Anything else is refused."""
    import yaml

    from textdistill.cli import main

    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "tiny", "tasks": [{"name": "mr", "subset": {"train_per_class": 12, "test_size": 20, "seed": 0}}],
        "learners": ["minilm-frozen"], "dpc": [2], "sets": 1, "seeds": 1,
        "methods": ["random", {"method": "dm", "options": {"iterations": 3, "real_batch": 10, "kernel": "mmd"}}]}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "textdistill.cli", "bench", str(suite), "--out", str(tmp_path / "one"),
                    "--distill-only"], env=env, check=True, capture_output=True)
    two_ranks(["bench", str(suite), "--out", str(tmp_path / "two"), "--distill-only"], env)
    sets = sorted(p.name for p in (tmp_path / "one" / "sets").iterdir())
    assert sets == sorted(p.name for p in (tmp_path / "two" / "sets").iterdir()) and len(sets) == 2
    for name in sets:
        one, two = (load_file(tmp_path / run / "sets" / name / "tensors.safetensors") for run in ("one", "two"))
        for k in one:
            torch.testing.assert_close(two[k], one[k], atol=1e-5, rtol=1e-4)
    assert_split(next((tmp_path / "two" / "sets").glob("*-dm-*")) / "manifest.json")

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["bench", str(suite), "--out", str(tmp_path / "three")]) == 2
    assert "--distill-only" in capsys.readouterr().err
