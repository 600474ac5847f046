"""Data-parallel distillation: a 2-process gloo run under torchrun equals the 1-process run."""

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


@pytest.mark.parametrize("method, learner, options", [
    ("dm", "minilm-frozen", ["--iterations", "3", "--real-batch", "10", "--kernel", "mmd"]),
    ("dc", "textcnn-glove", ["--outer-loops", "2", "--inner-loops", "2", "--length", "8", "--real-batch", "10"]),
    ("mtt", "minilm-frozen", ["--iterations", "3", "--experts", "2", "--expert-epochs", "2", "--max-start-epoch", "1",
                              "--match-epochs", "1", "--syn-steps", "3", "--buffer-dir", "{buffer}"]),
])
def test_two_ranks_equal_one_process(tmp_path, method, learner, options):
    data = tmp_path / "task.csv"
    rows = [(f"a fine warm funny film number {i}", "pos") if i % 2 else (f"a dull tired film number {i}", "neg")
            for i in range(48)]
    data.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = ["distill", "--task", str(data), "--method", method, "--dpc", "2", "--learner", learner]

    def own(run):  # mtt: each run trains its experts into its own buffer (the 2-rank run one expert per rank)
        return [o.format(buffer=tmp_path / f"buffer-{run}") for o in options] + ["--out", str(tmp_path / run)]

    subprocess.run([sys.executable, "-m", "textdistill.cli", *command, *own("one")], env=env, check=True,
                   capture_output=True)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(free_port()), "-m", "textdistill.cli", *command, *own("two")],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    one, two = load_file(tmp_path / "one" / "tensors.safetensors"), load_file(tmp_path / "two" / "tensors.safetensors")
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=1e-5, rtol=1e-4)
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["log"]["data_parallel_ranks"] == 2  # the real batches really were split
