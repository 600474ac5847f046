"""Has the full-data number converged? Each built-in task's full training split, trained with a learner's
full-data recipe and with twice its epochs (same seed, same warm-up fraction and schedule): the accuracy and the
mean training loss of the last epoch of both. "% of full" divides by the first; it rests on a converged number
when doubling the epochs moves neither much.

    python benchmarks/full_data_epochs.py [--tasks mr,bbc,rt,tweets,finefoods] [--learners minilm-frozen,textcnn-glove]
        [--seeds 1] [--json out.json]

Runs are cached like every evaluation (a bench's full-data cell and this script share the first one).
"""

from __future__ import annotations

import argparse
import json

from textdistill.data import BUILTIN, get_task
from textdistill.evaluation import evaluate
from textdistill.learners import get_learner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(BUILTIN))
    parser.add_argument("--learners", default="minilm-frozen,textcnn-glove")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = []
    print("| task | learner | epochs | steps | last-epoch loss | accuracy % |\n|---|---|---|---|---|---|", flush=True)
    for name in args.tasks.split(","):
        task = get_task(name)
        for learner_name in args.learners.split(","):
            learner = get_learner(learner_name).for_task(task)
            steps = learner.full_data_recipe(len(task.train)).steps
            for factor in (1, 2):
                (r,) = evaluate(task, None, [learner], seeds=args.seeds, recipe={"steps": factor * steps},
                                cache=True, progress=False)
                loss = sum(run["last_epoch_loss"] for run in r.runs) / len(r.runs)
                row = {"task": name, "learner": learner_name, "epochs": factor * learner.full_data["epochs"],
                       "steps": factor * steps, "last_epoch_loss": round(loss, 4),
                       "accuracy": [run["accuracy"] for run in r.runs]}
                rows.append(row)
                print(f"| {name} | {learner_name} | {row['epochs']} | {row['steps']} | {loss:.4f} | "
                      f"{r.summary()} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
