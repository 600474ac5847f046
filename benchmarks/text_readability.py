"""Readability of written text sets: SmolLM2's perplexity of each set beside real training sentences, and, for
a gradmm set, the set of the real sentences it started from (cut to its length), to evaluate beside it.

    python benchmarks/text_readability.py perplexity runs/gradmm/g10 runs/condense/c10
    python benchmarks/text_readability.py gradmm-start runs/gradmm/g10 runs/gradmm/g10-start
    textdistill evaluate runs/gradmm/g10-start --learner minilm --seeds 3

Perplexity: exp of the mean token negative log-likelihood under SmolLM2-135M-Instruct (``CausalLM.perplexity``);
the real reference is 200 training sentences of the first set's task, drawn with seed 0.
"""

import json
import sys

import numpy as np
import torch

from textdistill.data import get_task
from textdistill.learners import get_learner
from textdistill.lm import load_lm
from textdistill.distilled import DistilledDataset


def perplexity(dirs: list[str]) -> dict:
    sets = [DistilledDataset.load(d) for d in dirs]
    texts, _, _ = get_task(sets[0].task["name"]).columns("train")
    real = [texts[i] for i in np.random.default_rng(0).choice(len(texts), 200, replace=False)]
    lm = load_lm("smollm2-135m")
    return {"real (200 train)": round(lm.perplexity(real), 1),
            **{d: round(lm.perplexity(ds.texts), 1) for d, ds in zip(dirs, sets)}}


def gradmm_start(src: str, out: str) -> str:
    ds = DistilledDataset.load(src)
    texts, _, labels = get_task(ds.task["name"]).columns("train")
    tok = get_learner("smollm2-135m").tokenizer
    cut = [tok.decode(tok(texts[i], add_special_tokens=False)["input_ids"][: ds.config["length"]]).strip()
           for i in ds.source_indices]
    start = DistilledDataset(label_names=ds.label_names, method="file", config={"gradmm_start_of": src},
                             seed=ds.seed, task=ds.task, kind="text", texts=cut,
                             labels=torch.tensor([labels[i] for i in ds.source_indices]))
    start.save(out)
    changed = np.mean([a != b for a, b in zip(cut, ds.texts)])
    return f"{out}: the {len(cut)} starting texts; gradmm changed {changed:.0%} of them"


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    print(json.dumps(perplexity(args)) if command == "perplexity" else gradmm_start(*args))
