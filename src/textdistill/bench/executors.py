"""Where a suite's cells run: here, in a pool of local processes, or as Ray tasks. Each is an ``Executor``: a
callable ``(suite, out, device, todo, distill_only)`` that yields ``(cell, records, seconds)`` as cells finish;
the driver writes every finished cell the same way whichever ran it."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import ConfigError
from .cells import Cell
from .runner import Runner, run_cell
from .suite import Suite

Executor = Callable[[Suite, Path, str, list[Cell], bool], Iterator[tuple[Cell, list[dict] | None, float]]]


def run_here(suite: Suite, out: Path, device: str, todo: list[Cell], distill_only: bool):
    """The cells one after another in this process (the ``Executor`` of a plain run)."""
    runner = Runner(suite, out, device)  # tasks and learners loaded once for every cell
    for cell in todo:
        yield run_cell(suite, out, device, cell, distill_only, runner)


def run_in_processes(workers: int) -> Executor:
    """Cells in ``workers`` processes on this machine, handed out as processes free up, each holding torch to
    its share of the cores. Small models on small batches use 2 cores poorly: one 2-thread MiniLM run on MR at
    10 per class trained at 0.84 s a step, two 1-thread runs side by side at 1.01 and 1.09 s each (1.6 times
    the work per second); on BBC's 50 articles of 128 tokens 4.7 s, and 7.8 and 8.2 s (1.2 times; timed with
    benchmarks/threads.py, docs/results.md). A cell that
    fails lets the running ones finish (they are kept) and drops those not yet handed out (the pool hands out
    one more than it has processes: that one runs too), then its error is raised."""
    import multiprocessing
    import signal
    from concurrent.futures import ProcessPoolExecutor, as_completed

    def in_processes(suite: Suite, out: Path, device: str, todo: list[Cell], distill_only: bool):
        if not todo:
            return
        import threading

        import torch

        threads = max(1, torch.get_num_threads() // workers)
        # SIGTERM ends the driver through Python (not at once), so that leaving the pool stops the workers too
        main = threading.current_thread() is threading.main_thread()  # only the main thread may set a handler
        before = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM)) if main else None
        pool, failed = None, None
        try:
            # a worker that dies (out of memory, say) breaks the pool with an error instead of a hang
            pool = ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"), _start_worker,
                                       (suite, str(out), device, threads, os.getpid()))
            futures = [pool.submit(_worker_cell, cell, distill_only) for cell in todo]
            for future in as_completed(futures):
                if future.cancelled():
                    continue
                try:
                    result = future.result()
                except Exception as e:  # noqa: BLE001  the other running cells finish and are kept, then it raises
                    failed = failed or e
                    for other in futures:
                        other.cancel()  # the queued ones
                    continue
                yield result
            if failed is not None:
                raise failed
        finally:
            if pool is not None:
                for process in list((getattr(pool, "_processes", None) or {}).values()):  # running cells stop too
                    process.terminate()
                pool.shutdown(wait=False, cancel_futures=True)
            if main:
                signal.signal(signal.SIGTERM, before if before is not None else signal.SIG_DFL)

    return in_processes


_worker: "Runner | None" = None  # a pool process's runner: tasks and learners loaded once for all its cells


def _follow_parent(parent: int) -> None:
    """End this worker when its driver ends, even by kill -9 (no cleanup of the driver's runs then), rather than
    idle on with its models in memory: the kernel's parent-death signal on Linux, and a thread that watches the
    parent's id (anywhere; also a parent that died before the signal was asked for)."""
    import threading

    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass  # the watchdog alone

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, name="follow-parent", daemon=True).start()


def _start_worker(suite: Suite, out: str, device: str, threads: int, parent: int) -> None:
    global _worker
    _follow_parent(parent)
    import torch

    from .. import progress

    torch.set_num_threads(threads)
    _worker = Runner(suite, out, device)
    # the workers' progress bars would interleave (the driver's bar counts cells): every bar of this process off,
    # also those asked for explicitly
    progress.set_enabled(False)


def _worker_cell(cell: Cell, distill_only: bool) -> tuple[Cell, list[dict] | None, float]:
    assert _worker is not None
    return run_cell(_worker.suite, _worker.out, _worker.device, cell, distill_only, _worker)


def run_on_ray(address: str, cpus_per_cell: int) -> Executor:
    """Cells as Ray tasks, yielded as they finish. Ray is an optional extra: its absence is a clear error."""
    try:
        import ray
    except ImportError:
        raise ConfigError("bench --ray needs Ray: pip install 'textdistill[ray]'") from None

    def on_ray(suite: Suite, out: Path, device: str, todo: list[Cell], distill_only: bool):
        if not todo:
            return
        started = not ray.is_initialized()
        if started:  # the workers see this process's cache and offline settings
            env = {k: v for k, v in os.environ.items() if k.startswith(("TEXTDISTILL_", "HF_"))}
            ray.init(address=None if address == "local" else address, runtime_env={"env_vars": env},
                     include_dashboard=False, log_to_driver=False)
        task = ray.remote(num_cpus=cpus_per_cell, num_gpus=1 if device.startswith("cuda") else 0)(ray_cell)
        try:
            pending = {task.remote(suite, str(out), device, cell, distill_only, cpus_per_cell): cell
                       for cell in todo}
            while pending:
                (done,), _ = ray.wait(list(pending), num_returns=1)
                pending.pop(done)
                result = ray.get(done)
                check_set_visible(suite, out, result[0])
                yield result
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            if started:
                ray.shutdown()

    return on_ray


def check_set_visible(suite: Suite, out: Path, cell: Cell) -> None:
    """A Ray worker saves its cell's set under OUT on its own node: the driver must see it there, or the
    suite's sets would be scattered over the nodes' disks."""
    if cell.entry is None:
        return
    name = f"*-{suite.methods[cell.entry].label}-{cell.dpc}-s{cell.set_seed}"
    if not any((Path(out) / "sets").glob(name)):
        raise ConfigError(f"bench --ray: a worker saved the set {name} under {out} on its own node, and this "
                          "driver does not see it there: --out must be a folder that every Ray node shares "
                          "(a network filesystem)")


def ray_cell(suite: Suite, out: str, device: str, cell: Cell, distill_only: bool, threads: int):
    """A cell in a Ray worker, with torch held to the CPUs Ray granted it."""
    import torch

    torch.set_num_threads(threads)
    return run_cell(suite, out, device, cell, distill_only)
