"""The evaluation protocol: M fresh learners (seeds) trained on a set, test accuracy mean, std and every run."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .cache import cached_json, key_of
from .config import check_device
from .data import Task
from .errors import ArtifactError, ConfigError, TrainingDiverged
from .learners import FitLearner, Learner, get_learner
from .distilled import DistilledDataset
from .recipe import Recipe
from .seeds import eval_seed
from .train import predict, train
from .methods.attention_labels import set_loss


@dataclass
class EvalResult:
    task: str
    learner: str
    accuracy_mean: float | None  # over the finished runs; None when every run failed
    accuracy_std: float | None
    runs: list[dict]  # a failed run has accuracy None and "failed": why
    recipe: dict
    train_set: dict = field(default_factory=dict)  # method, size, fingerprint (or "full")
    seconds: float = 0.0
    failed_runs: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self, scale: float = 100, digits: int = 1) -> str:
        """The accuracy as mean ± std in percent, with failed runs counted; "failed" when no run finished."""
        n = len(self.runs)
        if self.accuracy_mean is None:
            return f"failed ({n} of {n} runs)"
        text = f"{scale * self.accuracy_mean:.{digits}f} ± {scale * self.accuracy_std:.{digits}f}"
        return text + (f" ({self.failed_runs} of {n} runs failed)" if self.failed_runs else "")


def resolve_recipe(learner: Learner, source: DistilledDataset | None, overrides: dict | None,
                   base: Recipe | None = None) -> Recipe:
    """The learner's default (or ``base``), then the artifact's own recipe (for the learner it is bound to), then
    overrides."""
    values = (base or learner.default_recipe).to_dict()
    if source is not None and source.recipe and (source.kind == "text" or (source.bound_to or {}).get("id") == learner.name):
        values.update(source.recipe)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return Recipe.from_dict(values)


def evaluate(
    task: Task,
    source: DistilledDataset | None = None,
    learners: "list[str | Learner] | None" = None,
    seeds: int = 5,
    recipe: dict | None = None,
    device: str = "cpu",
    cache: bool = False,
    progress: bool = True,
    full_data_recipe: bool = True,
) -> list[EvalResult]:
    """Train ``seeds`` fresh copies of each learner on ``source`` (None: the full training split) and test them.

    The full split trains with the learner's full-data recipe (epochs over it; ``Learner.full_data``), or with
    the small-set recipe when ``full_data_recipe=False``. Every run is cached on disk by (task, learner, recipe,
    training set, seed) when ``cache=True`` (the CLI and bench ask for it). A learner with its own fit
    (``FitLearner``: SetFit) trains through ``fit`` on text sets only, its settings recorded as the recipe.
    """
    learners = learners or ["minilm"]
    if seeds < 1:
        raise ConfigError(f"evaluate: seeds must be >= 1 (--seeds), got {seeds}")
    check_device(device)
    # names or Learner objects, reading the task's max_length; an unknown name fails before any run
    learners = [(name if isinstance(name, Learner) else get_learner(name)).for_task(task) for name in learners]
    if source is not None:
        source.check_task(task)
    test_texts, test_pairs, test_labels = task.columns("test")
    y_test = torch.tensor(test_labels)
    if source is None:
        texts, pairs, labels = task.columns("train")
        train_set = {"method": "full", "size": len(labels), "fingerprint": task.fingerprint}
    else:
        train_set = {"method": source.method, "size": len(source), "fingerprint": source.fingerprint()}
    for learner in learners:  # a learner with its own fit reads text: refuse a vector set before any run
        if isinstance(learner, FitLearner) and source is not None and source.kind != "text":
            where = f"{source.path}: " if source.path is not None else ""
            bound = (source.bound_to or {}).get("id")
            raise ArtifactError(f"{where}learner {learner.name!r} trains on text only, and this is a {source.kind} "
                                f"set{f' bound to {bound!r}' if bound else ''}: turn it into text first (textdistill "
                                "decode; a generator set generates), or evaluate it with the learner it is bound to")
    results = []
    for learner in learners:
        name = learner.name
        own_fit = isinstance(learner, FitLearner)
        if own_fit:  # its own settings, recorded as the recipe; a text set's loop recipe is not for it
            rec = learner.settings(recipe, full_data=source is None and full_data_recipe)
            fit_data = (texts, pairs, torch.tensor(labels)) if source is None else (
                source.texts, source.text_pairs, source.labels)
            lrs = None
        else:
            base = learner.full_data_recipe(len(texts)) if source is None and full_data_recipe else None
            rec = resolve_recipe(learner, source, recipe, base)
            if source is None:
                inputs, labels_t = learner.encode(texts, pairs), torch.tensor(labels)
            else:
                inputs, labels_t = source.inputs_for(learner), source.labels
            lrs = source.lrs if source is not None and source.kind != "text" else None
        recorded = rec if own_fit else rec.to_dict()
        test_inputs = None
        runs = []
        start = time.time()
        bar = tqdm(range(seeds), desc=f"evaluate {train_set['method']} with {name}", disable=not progress)
        for seed in bar:
            def fit_run() -> dict:
                t0 = time.time()
                fitted = learner.fit(*fit_data, task.num_classes, rec, eval_seed(seed), device=device,
                                     progress=progress)
                preds = fitted.predict(test_texts, test_pairs)
                return {"seed": seed, "learner_seed": eval_seed(seed),
                        "accuracy": float((preds == y_test).float().mean()), **fitted.log,
                        "seconds": round(time.time() - t0, 2), "device": str(device)}

            def run() -> dict:
                nonlocal test_inputs
                if test_inputs is None:
                    test_inputs = learner.encode(test_texts, test_pairs)
                t0 = time.time()
                model = learner.build(task.num_classes, eval_seed(seed))
                losses: list[float] = []
                try:
                    params = train(learner, model, inputs, labels_t, rec, seed=eval_seed(seed), lrs=lrs,
                                   loss=set_loss(source, rec), device=device,
                                   progress=progress and len(labels_t) > 256, losses=losses)
                except TrainingDiverged as e:  # one diverged learner is a result to report, not a reason to stop
                    return {"seed": seed, "learner_seed": eval_seed(seed), "accuracy": None, "failed": str(e),
                            "seconds": round(time.time() - t0, 2), "device": str(device)}
                preds = predict(learner, model, params, test_inputs, device=device, precision=rec.precision)
                # the mean training loss over the last epoch's steps: whether a full-data run had converged is
                # part of its number
                epoch = max(1, -(-len(labels_t) // min(rec.batch_size or 64, len(labels_t))))
                return {"seed": seed, "learner_seed": eval_seed(seed),
                        "accuracy": float((preds == y_test).float().mean()),
                        "last_epoch_loss": round(float(np.mean(losses[-epoch:])), 5),
                        "seconds": round(time.time() - t0, 2), "device": str(device)}

            # the learner seed is in the key: a run is reused only for the very same draws
            key = key_of(task.fingerprint, learner.describe(), recorded, train_set, lrs is not None, eval_seed(seed))
            work = fit_run if own_fit else run
            runs.append(cached_json("evals", key, work) if cache else work())
        accs = np.array([r["accuracy"] for r in runs if r["accuracy"] is not None])
        mean, std = (float(accs.mean()), float(accs.std())) if len(accs) else (None, None)
        results.append(EvalResult(task.name, name, mean, std, runs, recorded, train_set,
                                  round(time.time() - start, 2), failed_runs=len(runs) - len(accs)))
    return results
