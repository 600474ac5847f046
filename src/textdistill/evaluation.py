"""The evaluation protocol: M fresh learners (seeds) trained on a set, test accuracy mean, std and every run."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .cache import cached_json, key_of
from .config import check_device
from .data import Task
from .errors import ArtifactError, ConfigError, TrainingDiverged
from .learners import FitLearner, Fitted, Learner, get_learner
from .distilled import DistilledDataset
from .progress import bar as progress_bar
from .recipe import Recipe
from .seeds import eval_seed, torch_rng_kept
from .train import predict_logits, train
from .losses import set_loss


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
    # a multilingual test split (a ``language`` column): each language's accuracy, mean and std over the runs
    # that recorded it (runs cached before it was recorded hold none)
    accuracy_by_language: dict[str, float] = field(default_factory=dict)
    accuracy_by_language_std: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self, scale: float = 100, digits: int = 1) -> str:
        """The accuracy as mean ± std in percent, with failed runs counted; "failed" when no run finished."""
        n = len(self.runs)
        if self.accuracy_mean is None:
            return f"failed ({n} of {n} runs)"
        text = f"{scale * self.accuracy_mean:.{digits}f} ± {scale * self.accuracy_std:.{digits}f}"
        return text + (f" ({self.failed_runs} of {n} runs failed)" if self.failed_runs else "")

    def summary_by_language(self, scale: float = 100, digits: int = 1) -> str:
        """Each language's accuracy as mean ± std in percent ("en 70.1 ± 0.3, zh 61.0 ± 1.2"); "" without any."""
        return ", ".join(f"{lang} {scale * mean:.{digits}f} ± {scale * self.accuracy_by_language_std[lang]:.{digits}f}"
                         for lang, mean in self.accuracy_by_language.items())


def accuracy_by_language(predictions: torch.Tensor, labels: torch.Tensor, languages: list[str]) -> dict[str, float]:
    """The accuracy of ``predictions`` against ``labels`` on each language's examples, languages sorted."""
    if not len(predictions) == len(labels) == len(languages):
        raise ConfigError(f"accuracy_by_language: {len(predictions)} predictions, {len(labels)} labels and "
                          f"{len(languages)} languages must be as many")
    correct = (predictions == labels).tolist()
    out = {}
    for lang in sorted(set(languages)):
        hits = [c for c, x in zip(correct, languages) if x == lang]
        out[lang] = sum(hits) / len(hits)
    return out


def language_means(runs: list[dict]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and std of each language's accuracy over the runs that recorded it (a failed run or one cached before
    languages were recorded has none)."""
    values: dict[str, list[float]] = {}
    for run in runs:
        for lang, acc in (run.get("accuracy_by_language") or {}).items():
            values.setdefault(lang, []).append(acc)
    return ({lang: float(np.mean(v)) for lang, v in sorted(values.items())},
            {lang: float(np.std(v)) for lang, v in sorted(values.items())})


def resolve_recipe(learner: Learner, source: DistilledDataset | None, overrides: dict | None,
                   base: Recipe | None = None) -> Recipe:
    """The learner's default (or ``base``), then the artifact's own recipe (for the learner it is bound to), then
    overrides."""
    values = (base or learner.default_recipe).to_dict()
    if source is not None and source.recipe and (source.kind == "text" or (source.bound_to or {}).get("id") == learner.name):
        values.update(source.recipe)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return Recipe.from_dict(values)



def run_recipe(learner: Learner, task: Task, source: DistilledDataset | None, overrides: dict | None = None,
               full_data: bool = False) -> dict:
    """How ``learner`` trains on ``source`` (None: the full training split), as recorded with every run: a loop
    learner's Recipe (its full-data one when ``full_data``) or a ``FitLearner``'s own settings."""
    if isinstance(learner, FitLearner):
        return learner.settings(overrides, full_data=full_data)
    return resolve_recipe(learner, source, overrides, learner.full_data_recipe(len(task.train)) if full_data else None).to_dict()


def encoded_once(learner: Learner):
    """``learner.encode``, each distinct list of texts encoded once: every seed of an evaluation reads the same
    test split (and, on the full data, the same training split)."""
    done: dict = {}

    def encode(texts: list[str], pairs: list[str] | None = None) -> dict[str, torch.Tensor]:
        key = (tuple(texts), None if pairs is None else tuple(pairs))
        if key not in done:
            done[key] = learner.encode(texts, pairs)
        return done[key]

    return encode


def fit_on_set(task: Task, source: DistilledDataset | None, learner: Learner, seed: int, recipe: dict,
               device: str = "cpu", progress: bool = False, encode=None) -> Fitted:
    """A fresh ``learner`` trained on ``source`` (None: the task's full training split) with ``recipe`` (from
    ``run_recipe``), drawing evaluation run ``seed``'s stream (``eval_seed``): what evaluation tests and what
    the audit's loss attack holds. ``encode`` replaces ``learner.encode`` (``encoded_once``: runs that share
    it encode each text list once). A diverged run raises ``TrainingDiverged``."""
    if source is None:
        texts, pairs, labels = task.columns("train")
        labels = torch.tensor(labels)
    else:
        texts, pairs, labels = source.texts, source.text_pairs, source.labels
    learner_seed = eval_seed(seed)
    if isinstance(learner, FitLearner):
        weights = None if source is None else source.label_weights
        if weights is not None:  # a fit reads an example's weight as the mass of its label row
            labels = labels * weights.unsqueeze(-1)
        return learner.fit(texts, pairs, labels, task.num_classes, recipe, learner_seed, device=device,
                           progress=progress)
    rec, encode = Recipe.from_dict(recipe), encode or learner.encode
    inputs = source.inputs_for(learner) if source is not None and source.kind != "text" else encode(texts, pairs)
    model = learner.build(task.num_classes, learner_seed)
    losses: list[float] = []
    with torch_rng_kept(device):  # train() seeds dropout on the global generator: the caller's stream stays its own
        params = train(learner, model, inputs, labels, rec, seed=learner_seed,
                       lrs=source.lrs if source is not None and source.kind != "text" else None,
                       loss=set_loss(source, rec), device=device, progress=progress and len(labels) > 256,
                       losses=losses)
    # the mean training loss over the last epoch's steps: whether a full-data run had converged is part of its
    # number
    epoch = max(1, -(-len(labels) // min(rec.batch_size or 64, len(labels))))

    def logits(texts: list[str], pairs: list[str] | None = None) -> torch.Tensor:
        return predict_logits(learner, model, params, encode(texts, pairs), device=device,
                              precision=rec.precision)

    return Fitted(logits, {"last_epoch_loss": round(float(np.mean(losses[-epoch:])), 5)})


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
    for learner in learners:
        if task.spec.kind not in learner.task_kinds:
            raise ConfigError(f"learner {learner.name!r} is judged on {' or '.join(learner.task_kinds)} tasks, and "
                              f"task {task.name} is a {task.spec.kind} task: "
                              + ("use a causal LM learner such as 'smollm2-135m-lm'" if task.spec.kind != "classification"
                                 else "use a classifier such as 'minilm'"))
    if source is not None:
        source.check_task(task)
    test_texts, test_pairs, test_labels = task.columns("test")
    test_languages = task.languages("test")
    y_test = torch.tensor(test_labels)
    if source is None:
        train_set = {"method": "full", "size": len(task.train), "fingerprint": task.fingerprint}
    else:
        train_set = {"method": source.method, "size": len(source), "fingerprint": source.fingerprint()}
    for learner in learners:  # a set a learner cannot read is refused before any run
        if isinstance(learner, FitLearner) and source is not None and source.kind != "text":
            where = f"{source.path}: " if source.path is not None else ""
            bound = (source.bound_to or {}).get("id")
            raise ArtifactError(f"{where}learner {learner.name!r} trains on text only, and this is a {source.kind} "
                                f"set{f' bound to {bound!r}' if bound else ''}: turn it into text first (textdistill "
                                "decode; a generator set generates), or evaluate it with the learner it is bound to")
    for learner in learners:
        if source is not None and source.kind != "text" and not isinstance(learner, FitLearner):
            source.inputs_for(learner)  # the learner it is bound to, tensors of the widths it reads
    results = []
    for learner in learners:
        recorded = run_recipe(learner, task, source, recipe, full_data=source is None and full_data_recipe)
        encode = None if isinstance(learner, FitLearner) else encoded_once(learner)
        runs = []
        start = time.time()
        bar = progress_bar(range(seeds), desc=f"evaluate {train_set['method']} with {learner.name}",
                           disable=not progress)
        for seed in bar:
            def run() -> dict:
                t0 = time.time()
                try:
                    fitted = fit_on_set(task, source, learner, seed, recorded, device=device, progress=progress,
                                        encode=encode)
                except TrainingDiverged as e:  # one diverged learner is a result to report, not a reason to stop
                    return {"seed": seed, "learner_seed": eval_seed(seed), "accuracy": None, "failed": str(e),
                            "seconds": round(time.time() - t0, 2), "device": str(device)}
                preds = fitted.predict(test_texts, test_pairs)
                by_language = ({} if test_languages is None else
                               {"accuracy_by_language": accuracy_by_language(preds, y_test, test_languages)})
                return {"seed": seed, "learner_seed": eval_seed(seed),
                        "accuracy": float((preds == y_test).float().mean()), **by_language, **fitted.log,
                        "seconds": round(time.time() - t0, 2), "device": str(device)}

            # the learner seed is in the key: a run is reused only for the very same draws
            lrs = source is not None and source.kind != "text" and source.lrs is not None
            key = key_of(task.fingerprint, learner.describe(), recorded, train_set, lrs, eval_seed(seed))
            runs.append(cached_json("evals", key, run) if cache else run())
        accs = np.array([r["accuracy"] for r in runs if r["accuracy"] is not None])
        mean, std = (float(accs.mean()), float(accs.std())) if len(accs) else (None, None)
        by_language, by_language_std = language_means(runs)
        results.append(EvalResult(task.name, learner.name, mean, std, runs, recorded, train_set,
                                  round(time.time() - start, 2), failed_runs=len(runs) - len(accs),
                                  accuracy_by_language=by_language, accuracy_by_language_std=by_language_std))
    return results
