"""Wall time and peak memory of one step (a distillation, an evaluation), also inside a long process."""

from __future__ import annotations

import platform
import resource
import sys
import time
from pathlib import Path

import torch


def _peak_rss_mib() -> float:
    try:  # the high-water mark since the last reset (Linux)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss() -> bool:
    try:  # "5" resets VmHWM to the current RSS (Linux >= 4.0); elsewhere the peak is the process's
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Meter:
    """``with Meter() as m: ...`` then ``m.result()``: seconds, peak RSS in MiB, peak CUDA memory in MiB."""

    def __enter__(self) -> "Meter":
        self.per_step = _reset_peak_rss()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.start = time.time()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.time() - self.start
        self.peak_rss_mib = _peak_rss_mib()
        self.peak_cuda_mib = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None

    def result(self) -> dict:
        out = {"seconds": round(self.seconds, 2), "peak_rss_mib": round(self.peak_rss_mib),
               "rss_scope": "step" if self.per_step else "process"}
        if self.peak_cuda_mib is not None:
            out["peak_cuda_mib"] = round(self.peak_cuda_mib)
        return out

    def summary(self) -> str:
        cuda = f", peak GPU memory {self.peak_cuda_mib:.0f} MiB" if self.peak_cuda_mib is not None else ""
        return f"{self.seconds:.1f}s, peak memory {self.peak_rss_mib:.0f} MiB{cuda}"


def environment() -> dict:
    """Versions and machine, written beside every benchmark result."""
    import numpy
    import transformers

    from .version import __version__

    env = {"textdistill": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
           "transformers": transformers.__version__, "numpy": numpy.__version__,
           "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
           "cpu_threads": torch.get_num_threads()}
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
        env["cpu"] = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
        # what sets this CPU's speed (and bf16's) apart from another with the same generic model name
        flags = next(line.split(":", 1)[1].split() for line in info if line.startswith("flags"))
        env["cpu_features"] = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags)
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env
