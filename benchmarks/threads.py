"""Seconds per training step of fine-tuned MiniLM (`minilm`, its evaluation recipe) on a `random` set of a task,
with a given number of torch threads: what `bench --workers` trades. Start two 1-thread copies side by side to
time two workers sharing the cores:

    python benchmarks/threads.py --threads 2 --task mr --dpc 10 --steps 40
    python benchmarks/threads.py --threads 1 --task mr --dpc 10 --steps 40 &
    python benchmarks/threads.py --threads 1 --task mr --dpc 10 --steps 40; wait
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from textdistill.data import get_task
from textdistill.learners import get_learner
from textdistill.methods import get_method
from textdistill.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--task", default="mr")
    parser.add_argument("--dpc", type=int, default=10)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = get_task(args.task)
    learner = get_learner("minilm").for_task(task)
    ds = get_method("random").distill(task, args.dpc, learner, seed=0)
    inputs, model = ds.inputs_for(learner), learner.build(task.num_classes, 0)
    recipe = learner.default_recipe
    train(learner, model, inputs, ds.labels, replace(recipe, steps=3), seed=0)  # warm-up: first-call costs
    start = time.perf_counter()
    train(learner, model, inputs, ds.labels, replace(recipe, steps=args.steps), seed=0)
    seconds = time.perf_counter() - start
    print(f"{args.task} {args.dpc}/class, {args.threads} thread(s): {seconds / args.steps:.2f} s a step "
          f"({args.steps} steps, {seconds:.1f} s)")


if __name__ == "__main__":
    main()
