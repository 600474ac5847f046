"""Seconds per fine-tuned `minilm` evaluation run, before and after the CPU speed-up, interleaved in one process.

One run is what `evaluate` does per seed: a fresh MiniLM with a seeded head, 200 AdamW steps on an MR set of
10 examples per class (`random`, set seed 0), then predictions for MR's 1,000 test sentences. Configurations:

- `old`: the loop as it was up to commit 127dfc8: eager attention, AdamW as multi-tensor (foreach) ops,
  prediction batches in the test set's order (each padded to its longest sentence);
- `new`: the library as it is: SDPA attention (eager where a method differentiates twice) with BERT-like
  models packed to their real tokens, one fused AdamW kernel per tensor, prediction batches sorted by length;
- `bf16`: `new` under bf16 autocast (`--precision bf16`).

Configurations alternate within each seed, so a busy machine slows them alike. Prints one row per run, then
the median seconds, mean accuracy and the speed ratio against `old`:

    python benchmarks/speed.py [--seeds 3] [--configs old,new,bf16] [--json speed.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from contextlib import nullcontext

import torch

from textdistill.data import get_task
from textdistill.learners import get_learner
from textdistill.methods import get_method
from textdistill.train import Recipe, batch_of, predict, train
import textdistill.train as training


@torch.no_grad()
def old_adamw_step_(params, grads, state, step, lr, recipe) -> None:
    """The multi-tensor AdamW step that the fused kernel replaced (same maths)."""
    b1, b2 = recipe.betas
    c1, c2 = 1 - b1**step, 1 - b2**step
    p, g = list(params.values()), [grads[k] for k in params]
    m, v = [state["m"][k] for k in params], [state["v"][k] for k in params]
    torch._foreach_mul_(m, b1)
    torch._foreach_add_(m, g, alpha=1 - b1)
    torch._foreach_mul_(v, b2)
    torch._foreach_addcmul_(v, g, g, value=1 - b2)
    torch._foreach_mul_(p, 1 - lr * recipe.weight_decay)
    denom = torch._foreach_sqrt(v)
    torch._foreach_div_(denom, math.sqrt(c2))
    torch._foreach_add_(denom, recipe.eps)
    torch._foreach_addcdiv_(p, m, denom, value=-lr / c1)


@torch.no_grad()
def old_predict(learner, model, params, inputs, batch_size: int = 128) -> torch.Tensor:
    """Prediction batches in the given order."""
    model.eval()
    n = next(iter(inputs.values())).shape[0]
    return torch.cat([learner.forward(model, params, batch_of(inputs, torch.arange(s, min(n, s + batch_size))))
                      .argmax(-1) for s in range(0, n, batch_size)])


FAST_ADAMW_STEP_ = training.adamw_step_


def one_run(config: str, learner, task, inputs, labels, test_inputs, y_test, seed: int) -> dict:
    old = config == "old"
    training.adamw_step_ = old_adamw_step_ if old else FAST_ADAMW_STEP_  # train() looks it up per call
    learner.__dict__.pop("first_order", None)
    if old:
        learner.first_order = lambda model: nullcontext()  # eager attention everywhere
    recipe = Recipe(**{**learner.default_recipe.to_dict(), "precision": "bf16" if config == "bf16" else "float32"})
    start, cpu = time.perf_counter(), time.process_time()
    model = learner.build(task.num_classes, seed)
    params = train(learner, model, inputs, labels, recipe, seed=seed)
    trained = time.perf_counter()
    preds = (old_predict(learner, model, params, test_inputs) if old
             else predict(learner, model, params, test_inputs, precision=recipe.precision))
    end = time.perf_counter()
    return {"config": config, "seed": seed, "seconds": round(end - start, 1),
            "cpu_s": round(time.process_time() - cpu, 1), "train_s": round(trained - start, 1),
            "predict_s": round(end - trained, 1), "accuracy": round(float((preds == y_test).float().mean()), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3, help="learner seeds 0..N-1, every configuration on each")
    ap.add_argument("--configs", default="old,new,bf16", help="comma-separated: old, new, bf16")
    ap.add_argument("--json", help="write every run here")
    args = ap.parse_args()
    configs = args.configs.split(",")
    task, learner = get_task("mr"), get_learner("minilm")
    ds = get_method("random").distill(task, 10, learner, seed=0)
    inputs, labels = ds.inputs_for(learner), ds.labels
    test_texts, test_pairs, test_labels = task.columns("test")
    test_inputs, y_test = learner.encode(test_texts, test_pairs), torch.tensor(test_labels)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; MR random 10/class, 200 steps, "
          f"{len(y_test)} test sentences")
    runs = []
    for seed in range(args.seeds):
        for config in configs:
            runs.append(one_run(config, learner, task, inputs, labels, test_inputs, y_test, seed))
            print(json.dumps(runs[-1]), flush=True)
    print("\n| configuration | seconds a run (median) | CPU seconds (median) | train / predict s | accuracy % (mean) "
          "| speed-up over old |")
    print("|---|---|---|---|---|---|")
    median = {c: statistics.median(r["seconds"] for r in runs if r["config"] == c) for c in configs}
    for c in configs:
        mine = [r for r in runs if r["config"] == c]
        parts = f"{statistics.median(r['train_s'] for r in mine):.0f} / {statistics.median(r['predict_s'] for r in mine):.0f}"
        acc = 100 * statistics.fmean(r["accuracy"] for r in mine)
        ratio = f"{median['old'] / median[c]:.2f}x" if "old" in median else "-"
        cpu = statistics.median(r["cpu_s"] for r in mine)
        print(f"| {c} | {median[c]:.0f} | {cpu:.0f} | {parts} | {acc:.2f} | {ratio} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": runs, "environment": {"torch": torch.__version__, "threads": torch.get_num_threads()}},
                      f, indent=1)


if __name__ == "__main__":
    main()
