"""Methods, coreset baselines and full data under the evaluation protocol; prints Markdown tables.

    python benchmarks/compare.py --tasks mr bbc --learners minilm-frozen --dpc 1 5 10 20 --seeds 5

Evaluations are cached (see textdistill.cache), so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from textdistill.data import get_task
from textdistill.decode import decode_to_text
from textdistill.evaluate import evaluate
from textdistill.learners import get_learner
from textdistill.methods import get_method


def seconds_per_run(runs: list[dict]) -> float:
    return sum(x["seconds"] for x in runs) / len(runs)


def pool(results):
    """K sets x M learner seeds as one result: every run, mean and std over all of them."""
    first = results[0]
    runs = [{**x, "set_seed": k} for k, r in enumerate(results) for x in r.runs]
    accs = [x["accuracy"] for x in runs]
    mean = sum(accs) / len(accs)
    std = (sum((a - mean) ** 2 for a in accs) / len(accs)) ** 0.5
    return type(first)(first.task, first.learner, mean, std, runs, first.recipe, first.train_set,
                       sum(r.seconds for r in results))


def pivot(records: list[dict]) -> str:
    """One table per (task, learner): methods x examples per class, then full data."""
    out = []
    groups = sorted({(r["task"], r["learner"]) for r in records}, key=lambda g: (g[0] != "mr", g))
    for task, learner in groups:
        rs = [r for r in records if (r["task"], r["learner"]) == (task, learner)]
        dpcs = sorted({r["dpc"] for r in rs if r["dpc"]})
        seeds = max(len(r["runs"]) for r in rs)
        out.append(f"**{task}, {learner}** (test accuracy %, mean ± std over {seeds} runs: distilled sets x "
                   "learner seeds)\n")
        out.append("| method | " + " | ".join(f"{d}/class" for d in dpcs) + " |")
        out.append("|---|" + "---|" * len(dpcs))
        for method in dict.fromkeys(r["method"] for r in rs if r["dpc"]):
            cells = {r["dpc"]: r for r in rs if r["method"] == method}
            out.append(f"| {method} | " + " | ".join(
                f"{100 * cells[d]['accuracy_mean']:.1f} ± {100 * cells[d]['accuracy_std']:.1f}" if d in cells else "-"
                for d in dpcs) + " |")
        for r in rs:
            if r["method"] == "full":
                secs = seconds_per_run(r["runs"])
                out.append(f"| full data ({r['train_set']['size']}) | {100 * r['accuracy_mean']:.1f} ± "
                           f"{100 * r['accuracy_std']:.1f} ({len(r['runs'])} seeds, {secs:.0f} s a run) |"
                           + " |" * (len(dpcs) - 1))
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["mr", "bbc"])
    ap.add_argument("--learners", nargs="+", default=["minilm-frozen"])
    ap.add_argument("--methods", nargs="+", default=["random", "kcenter", "kmeans", "herding"])
    ap.add_argument("--dpc", nargs="+", type=int, default=[1, 5, 10, 20])
    ap.add_argument("--seeds", type=int, default=5, help="learner seeds per distilled set")
    ap.add_argument("--sets", type=int, default=1, help="distilled sets per cell (distillation seeds 0..K-1)")
    ap.add_argument("--full-seeds", type=int, default=None, help="learner seeds for full data (default: --seeds)")
    ap.add_argument("--options", default="{}", help='method options as JSON, e.g. \'{"bptt": {"labels": "hard"}}\'')
    ap.add_argument("--decode", action="store_true", help="also evaluate token-embedding sets decoded to text")
    ap.add_argument("--json", default=None, help="write every result here")
    ap.add_argument("--from-json", default=None, help="only print the tables of an earlier --json file")
    args = ap.parse_args()
    if args.from_json:
        with open(args.from_json) as f:
            print(pivot(json.load(f)["results"]))
        return

    records = []
    options = json.loads(args.options)
    for task_name in args.tasks:
        task = get_task(task_name)
        for learner_name in args.learners:
            learner = get_learner(learner_name)
            for method in args.methods:
                for dpc in args.dpc:
                    results, decoded, distill_s = [], [], 0.0
                    for set_seed in range(args.sets):
                        t0 = time.time()
                        ds = get_method(method, **options.get(method, {})).distill(task, dpc, learner, seed=set_seed)
                        distill_s += (time.time() - t0) / args.sets
                        results += evaluate(task, ds, [learner_name], seeds=args.seeds, progress=False)
                        if args.decode and ds.kind == "token-embeddings":
                            decoded += evaluate(task, decode_to_text(ds), [learner_name], seeds=args.seeds, progress=False)
                    for name, group in ((method, results), (f"{method}+decode", decoded)):
                        if not group:
                            continue
                        r = pool(group)
                        run_s = seconds_per_run(r.runs)
                        records.append({**r.to_dict(), "method": name, "dpc": dpc, "distill_seconds": distill_s})
                        print(f"| {task_name} | {learner_name} | {name} | {dpc} | {100 * r.accuracy_mean:.1f} ± "
                              f"{100 * r.accuracy_std:.1f} | {distill_s:.1f} | {run_s:.1f} |", flush=True)
            (r,) = evaluate(task, None, [learner_name], seeds=args.full_seeds or args.seeds, progress=False)
            run_s = seconds_per_run(r.runs)
            records.append({**r.to_dict(), "method": "full", "dpc": None})
            print(f"| {task_name} | {learner_name} | full | all | {100 * r.accuracy_mean:.1f} ± "
                  f"{100 * r.accuracy_std:.1f} | - | {run_s:.1f} |", flush=True)
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(f"\nmachine: {machine}\n")
    print(pivot(records))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "results": records}, f, indent=1)


if __name__ == "__main__":
    main()
