"""The driver of a suite's run: it claims OUT, runs the cells that are not finished on an executor, writes each
finished cell, and collects ``results.json`` from every finished cell."""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
from pathlib import Path

from ..cache import atomic_write
from ..config import check_device
from ..errors import ConfigError
from ..progress import bar as progress_bar
from ..report import duration
from .cells import Cell, plan
from .cost import CostModel, suite_cost
from .executors import run_here, run_in_processes, run_on_ray
from .suite import Suite


def run_suite(suite: Suite, out: str | Path, device: str = "cpu", shard: tuple[int, int] = (0, 1),
              progress: bool = True, distill_only: bool = False, ray: str | None = None,
              cpus_per_cell: int = 1, workers: int = 1) -> dict:
    """Run (or resume) every cell of this shard, then write ``results.json`` from all finished cells.

    ``distill_only`` saves the distilled sets and evaluates nothing: a later run (on another machine, with the
    ``sets/`` folder) evaluates them without distilling again. ``ray`` runs the cells as Ray tasks ("local"
    starts a Ray instance on this machine; otherwise the address of a cluster to join), ``cpus_per_cell`` CPUs
    each (and a GPU each on ``cuda``); ``workers`` runs them in that many processes on this machine, sharing its
    cores. Either way the driver writes every finished cell exactly as a serial run would.
    """
    if workers < 1 or (ray and workers > 1):
        raise ConfigError(f"workers must be at least 1 (got {workers}), and 1 with ray (its tasks are the workers)")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if workers > cores:  # more processes than cores only share them, each slower (7 on 2 cores: 5x the time)
        print(f"note: --workers {workers} is more than the {cores} cores this process may use; running {cores}",
              file=sys.stderr)
        workers = cores
    from ..learners import get_learner
    from ..measure import environment

    check_device(device)
    for name in {*suite.learners, *map(suite.learner_of, suite.methods), *([suite.bar] if suite.bar else [])}:
        get_learner(name)  # an unknown learner fails here, not after hours of cells
    out = Path(out)
    claim_out(out, suite)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    index, count = shard
    mine = [c for i, c in enumerate(plan(suite)) if i % count == index]
    todo = [c for c in mine if read_cell(out / "cells" / f"{c.key(suite)}.json", "it is run again") is None]
    env = environment()
    costs = CostModel()
    for c in mine:
        doc = None if c in todo else read_cell(out / "cells" / f"{c.key(suite)}.json", "")
        if doc is not None:
            costs.add(c, suite, doc)
    if progress:
        print(f"bench {suite.name}: {len(mine)} cells{' in this shard' if count > 1 else ''}, "
              f"{len(mine) - len(todo)} finished, {len(todo)} to run; {costs.describe(todo, suite)}",
              file=sys.stderr)
    bar = progress_bar(total=len(mine), initial=len(mine) - len(todo), desc=f"bench {suite.name}", unit="cell",
                       disable=not progress)

    def finish(cell: Cell, records: list[dict] | None, seconds: float) -> None:
        if records is not None:
            doc = {"key": cell.key(suite), "cell": cell.describe(suite), "environment": env, "device": device,
                   **({"workers": workers} if workers > 1 else {}),  # its seconds are one worker's, cores shared
                   "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                   "seconds": round(seconds, 1), "records": records}
            atomic_write(out / "cells" / f"{doc['key']}.json", lambda p: p.write_text(json.dumps(doc, indent=1)))
            costs.add(cell, suite, doc)
        bar.update()

    remaining = list(todo)  # parallel runs finish cells out of order

    def status() -> None:  # what runs next (all that is left, in parallel) and the estimate of the rest
        if not remaining:  # not the last estimate, frozen on the finished bar
            bar.set_postfix_str("every cell finished")
            return
        left = costs.estimate(remaining, suite)[0]
        now = f"{len(remaining)} cells queued or running" if ray or workers > 1 else remaining[0].describe(suite)
        bar.set_postfix_str(now + (f"; about {duration(left)} left" if left else ""))

    run = run_on_ray(ray, cpus_per_cell) if ray else run_in_processes(workers) if workers > 1 else run_here
    if remaining:
        status()
    for cell, records, seconds in run(suite, out, device, todo, distill_only):
        remaining.remove(cell)
        finish(cell, records, seconds)
        status()
    bar.close()
    return collect(suite, out)


def _owner(out: Path, suite: Suite) -> None:
    """Refuse an OUT whose suite.json names another suite: two suites in one folder would share results.json and
    the report, and each run would print that report as its own."""
    path = out / "suite.json"
    try:
        owner = json.loads(path.read_text())["name"]
    except FileNotFoundError:
        return
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"{path}: unreadable ({type(e).__name__}), so whose results {out} holds is unknown; "
                          "give another --out") from None
    if owner != suite.name:
        raise ConfigError(f"{out} holds suite {owner}'s results ({path}); give suite {suite.name} another --out")


def claim_out(out: Path, suite: Suite) -> None:
    """Write ``OUT/suite.json`` for ``suite``, refusing an OUT that holds another suite (``_owner``). The first
    run creates the file in one step that fails if it exists, so two suites started at once into one new OUT
    cannot both take it; the same suite (resumed, sharded, with overrides) writes its current form."""
    import tempfile

    from ..cache import follow_umask

    out.mkdir(parents=True, exist_ok=True)
    path, text = out / "suite.json", json.dumps(suite.to_dict(), indent=1)
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        follow_umask(Path(tmp))
        try:
            os.link(tmp, path)  # whole, and only if absent
            return
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links: an exclusive create, then the text
            try:
                with open(path, "x") as f:
                    f.write(text)
                return
            except FileExistsError:
                pass
    finally:
        os.unlink(tmp)
    _owner(out, suite)
    atomic_write(path, lambda p: p.write_text(text))


def read_cell(path: Path, then: str) -> dict | None:
    """A finished cell, or None when absent; a damaged one (a killed copy, a full disk) is warned about, not fatal."""
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
        if isinstance(doc, dict) and isinstance(doc.get("records"), list) and isinstance(doc.get("environment"), dict):
            return doc
        why = "not a cell"
    except (OSError, ValueError) as e:
        why = e.__class__.__name__
    print(f"warning: {path}: unreadable cell ({why}); {then}", file=sys.stderr)
    return None


def collect(suite: Suite, out: str | Path) -> dict:
    """``results.json``: the suite, the environment, and every finished cell's records in plan order."""
    out = Path(out)
    _owner(out, suite)  # --report-only would replace another suite's results
    records, missing, envs, docs = [], [], [], []
    for cell in plan(suite):
        doc = read_cell(out / "cells" / f"{cell.key(suite)}.json", "it counts as missing")
        if doc is None:
            missing.append(cell.describe(suite))
            continue
        docs.append(doc)
        records += [{**r, "device": doc.get("device", "cpu")} for r in doc["records"]]
        if doc["environment"] not in envs:
            envs.append(doc["environment"])
    results = {"suite": suite.to_dict(), "environments": envs, "records": records, "missing": missing,
               "cost": suite_cost(docs)}
    atomic_write(out / "results.json", lambda p: p.write_text(json.dumps(results, indent=1)))
    return results
