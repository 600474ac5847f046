"""One cell's work: its distilled set (loaded when finished, else distilled and saved) and its evaluations."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..cache import atomic_write
from ..errors import ArtifactError
from ..report import FULL_SET_RECIPE
from .cells import Cell, load_task
from .suite import Suite


class Runner:
    """Runs a suite's cells into ``out``; tasks and learners are loaded once per process."""

    def __init__(self, suite: Suite, out: str | Path, device: str = "cpu") -> None:
        self.suite, self.out, self.device = suite, Path(out), device
        self._learners: dict[str, object] = {}

    def task(self, i: int):
        return load_task(self.suite.tasks[i])

    def learner(self, name: str):
        from ..learners import get_learner

        if name not in self._learners:
            self._learners[name] = get_learner(name)
        return self._learners[name]

    def tokens(self, ds, learner: str, task) -> int | None:
        """The tokens ``learner`` reads in the set (the report shows them beside its examples: a budget in examples
        rewards long examples); None for a set of vectors."""
        from ..tokens import set_tokens

        return set_tokens(ds, self.learner(learner), task)

    def _evaluate(self, task, source, learner: str, seeds: int, **options) -> tuple[dict, dict]:
        from ..api import evaluate
        from ..measure import Meter

        with Meter() as m:
            (r,) = evaluate(task, source, [self.learner(learner)], seeds=seeds, recipe=self.suite.recipe,
                            device=self.device, cache=True, progress=False, **options)
        return r.to_dict(), m.result()

    def distilled(self, cell: Cell):
        """The cell's distilled set: loaded when a finished one is on disk, else distilled and saved."""
        from ..api import distill
        from ..distilled import DistilledDataset
        from ..distributed import agree, barrier, is_main
        from ..privacy import is_private

        entry, key = self.suite.methods[cell.entry], cell.set_key(self.suite)
        task = self.task(cell.task)
        path = self.out / "sets" / f"{task.name}-{entry.label}-{cell.dpc}-s{cell.set_seed}"
        # The key holds the task's fingerprint, a membership oracle: a DP set's is kept beside the sets, not in one.
        private_key = self.out / "private-set-keys" / path.name

        def finished() -> DistilledDataset | None:
            if (path / "manifest.json").exists():
                try:
                    ds = DistilledDataset.load(path)
                    recorded = (private_key.read_text() if private_key.exists() else None) if is_private(ds) \
                        else ds.provenance.set_key
                    return ds if recorded == key else None
                except ArtifactError:
                    pass  # a damaged set is distilled again
            return None

        # Under torchrun (bench --distill-only) the ranks distil together or not at all, as rank 0 finds the set.
        ds = finished()
        if agree(ds is not None):
            return (ds if ds is not None else finished()), path
        ds = distill(task, entry.method, cell.dpc, self.learner(self.suite.learner_of(entry)), seed=cell.set_seed,
                     device=self.device, **entry.options)
        if not is_private(ds):
            ds.provenance.set_key = key
        if not is_main():
            barrier()  # rank 0 writes the set
            return ds, path
        if is_private(ds):
            atomic_write(private_key, lambda p: p.write_text(key))
        ds.save(path, overwrite=True)
        barrier()
        # the set's page, linked from the report; none for a DP set: the page shows the nearest real training
        # sentences and a map of the private data, outside the mechanism
        if not is_private(ds):
            try:  # a picture that fails must not cost the cell
                from ..page import write_set_page

                write_set_page(ds, task, path / "page.html")
            except Exception as e:  # noqa: BLE001
                print(f"warning: no page for {path.name}: {type(e).__name__}: {e}", file=sys.stderr)
        return ds, path

    def run_cell(self, cell: Cell) -> list[dict]:
        from ..api import decode
        from ..measure import Meter

        suite, task = self.suite, self.task(cell.task)
        if cell.entry is None:
            # Both: the full-data recipe (what "% of full" divides by) and the small sets' recipe, whose shorter
            # schedule is what the sets get (the gap between the two is part of the comparison).
            from ..learners import FitLearner

            records = []
            for name in suite.learners:
                # SetFit's small-set settings on the full data are 20 pairs per example, hours on a CPU: its
                # full-data row is its capped setting only
                own_fit = isinstance(self.learner(name), FitLearner)
                for method, converged in (("full", True), *(() if own_fit else ((FULL_SET_RECIPE, False),))):
                    result, step = self._evaluate(task, None, name, suite.full_seeds or suite.seeds,
                                                  full_data_recipe=converged)
                    records.append({**result, "task": task.name, "method": method, "dpc": None, "set_seed": None,
                                    "steps": {"evaluate": step}})
            return records
        entry = suite.methods[cell.entry]
        ds, path = self.distilled(cell)
        if cell.bar:  # the random set (shared with its cell) with the bar learner alone
            result, step = self._evaluate(task, ds, suite.bar, suite.seeds)
            return [{**result, "task": task.name, "method": entry.label, "base_method": entry.method, "bar": True,
                     "options": entry.options, "distill_learner": suite.learner_of(entry), "dpc": cell.dpc,
                     "set_seed": cell.set_seed, "kind": ds.kind, "artifact": str(path.relative_to(self.out)),
                     "tokens": self.tokens(ds, suite.bar, task), "steps": {"evaluate": step}}]
        sets = [(entry.label, ds, {"distill": ds.provenance.distill_step})]
        if entry.decode and ds.kind == "token-embeddings":
            with Meter() as m:
                text = decode(ds)
            sets.append((f"{entry.label}+text", text, {"decode": m.result()}))
        records = []
        for label, source, steps in sets:
            bound = source.kind != "text" and source.bound_learner()
            privacy = audit_summary(source, task) if suite.audit else None
            for name in [bound] if bound else suite.learners:
                result, step = self._evaluate(task, source, name, suite.seeds)
                records.append({**result, "task": task.name, "method": label, "base_method": entry.method,
                                "options": entry.options, "distill_learner": suite.learner_of(entry),
                                "dpc": cell.dpc, "set_seed": cell.set_seed, "kind": source.kind,
                                "artifact": str(path.relative_to(self.out)), "tokens": self.tokens(source, name, task),
                                "steps": {**steps, "evaluate": step}, **({"audit": privacy} if privacy else {})})
        return records


def audit_summary(source, task) -> dict:
    """The audit's headline numbers for a report column (``textdistill audit`` gives them all)."""
    from ..api import audit

    r = audit(source, task)
    copying, membership = r["copying"] or {}, r["membership"] or {}
    return {"exact_copies": copying.get("exact_copies"), "max_word_overlap_train": copying.get("max_word_overlap_train"),
            "set_to_train_cosine": r["nearest"]["set_to_train_cosine"],
            **{f"{name}_auc": m["auc"] for name, m in membership.items()}}


def run_cell(suite: Suite, out: str | Path, device: str, cell: Cell, distill_only: bool,
             runner: "Runner | None" = None) -> tuple[Cell, list[dict] | None, float]:
    """One cell: its records and seconds (None records for a distill-only cell: its set is saved, no more)."""
    runner = runner or Runner(suite, out, device)
    start = time.time()
    if distill_only:
        if cell.entry is not None:
            runner.distilled(cell)
        return cell, None, time.time() - start
    return cell, runner.run_cell(cell), time.time() - start
