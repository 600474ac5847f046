"""Label faithfulness of distilled text sets: how many examples a probe trained on the full data labels as the set does.

    python benchmarks/label_agreement.py runs/dilm-mr [runs/dilm-sst2 ...]

The probe is `minilm-frozen` (a linear head on frozen MiniLM vectors, its default recipe, seed 0), trained
on the training split each set was distilled from. Generated examples that the probe labels at chance
cannot teach a learner much, whatever else they carry.
"""

import sys
from collections import defaultdict
from pathlib import Path

import torch

from textdistill.data import get_task
from textdistill.learners import get_learner
from textdistill.distilled import DistilledDataset
from textdistill.train import predict, train


def main(dirs: list[str]) -> None:
    probe, trained = get_learner("minilm-frozen"), {}
    rows = defaultdict(list)
    for folder in dirs:
        for path in sorted((Path(folder) / "sets").iterdir()):
            ds = DistilledDataset.load(path)
            if ds.kind != "text":
                continue
            origin = ds.task["origin"]
            key = str(origin)
            if key not in trained:
                task = get_task(**origin)
                texts, pairs, labels = task.columns("train")
                model = probe.build(task.num_classes, 0)
                trained[key] = model, train(probe, model, probe.encode(texts, pairs), torch.tensor(labels),
                                            probe.default_recipe, seed=0)
            model, params = trained[key]
            agree = (predict(probe, model, params, probe.encode(ds.texts, ds.text_pairs)) == ds.hard_labels).float()
            method = path.name.removeprefix(ds.task["name"] + "-").rsplit("-", 2)[0]
            rows[(ds.task["name"], method)].append(100 * float(agree.mean()))
    print("| task | method | agreement % (min-max over sets and budgets) |\n|---|---|---|")
    for (task, method), values in rows.items():
        print(f"| {task} | {method} | {sum(values) / len(values):.0f} ({min(values):.0f}-{max(values):.0f}) |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["runs/dilm-mr"])
