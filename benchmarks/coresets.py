"""Coreset baselines and full data under the evaluation protocol; prints a Markdown table.

    python benchmarks/coresets.py --tasks mr bbc --learners minilm-frozen --dpc 1 5 10 20 --seeds 5

Evaluations are cached (see textdistill.cache), so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from textdistill.data import get_task
from textdistill.evaluate import evaluate
from textdistill.learners import get_learner
from textdistill.methods import get_method


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["mr", "bbc"])
    ap.add_argument("--learners", nargs="+", default=["minilm-frozen"])
    ap.add_argument("--methods", nargs="+", default=["random", "kcenter", "kmeans", "herding"])
    ap.add_argument("--dpc", nargs="+", type=int, default=[1, 5, 10, 20])
    ap.add_argument("--seeds", type=int, default=5, help="learner seeds per cell")
    ap.add_argument("--full-seeds", type=int, default=None, help="learner seeds for full data (default: --seeds)")
    ap.add_argument("--json", default=None, help="write every result here")
    args = ap.parse_args()

    rows, records = [], []
    for task_name in args.tasks:
        task = get_task(task_name)
        for learner_name in args.learners:
            learner = get_learner(learner_name)
            for method in args.methods:
                for dpc in args.dpc:
                    t0 = time.time()
                    ds = get_method(method).distill(task, dpc, learner, seed=0)
                    distill_s = time.time() - t0
                    (r,) = evaluate(task, ds, [learner_name], seeds=args.seeds, progress=False)
                    run_s = sum(x["seconds"] for x in r.runs) / len(r.runs)
                    rows.append((task_name, learner_name, method, dpc, r.accuracy_mean, r.accuracy_std, distill_s, run_s))
                    records.append({**r.to_dict(), "method": method, "dpc": dpc, "distill_seconds": distill_s})
                    print(f"| {task_name} | {learner_name} | {method} | {dpc} | {100 * r.accuracy_mean:.1f} ± "
                          f"{100 * r.accuracy_std:.1f} | {distill_s:.1f} | {run_s:.1f} |", flush=True)
            (r,) = evaluate(task, None, [learner_name], seeds=args.full_seeds or args.seeds, progress=False)
            run_s = sum(x["seconds"] for x in r.runs) / len(r.runs)
            records.append({**r.to_dict(), "method": "full", "dpc": None})
            print(f"| {task_name} | {learner_name} | full | all | {100 * r.accuracy_mean:.1f} ± "
                  f"{100 * r.accuracy_std:.1f} | - | {run_s:.1f} |", flush=True)
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(f"\nmachine: {machine}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "results": records}, f, indent=1)


if __name__ == "__main__":
    main()
