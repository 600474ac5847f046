"""Privacy audit of a distilled set: what it copies from the training split, how close it sits to it, and how
well an attacker who holds the set tells training examples (members) from held-out ones (non-members).

Copying follows CondenseLM (Shen et al. 2025): per example, the largest fraction of its words found in one
training example, beside the same against the test split as the reference level of ordinary overlap. The
membership test needs non-members the method never read and that are not the test split: a set distilled
on ``NAME:validation`` has them (the carved validation split); other sets get copying and distances only.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from .data import Task
from .data.task import text_key
from .distilled import DistilledDataset
from .errors import ArtifactError, ConfigError
from .tokens import count_learner, set_tokens
from .words import words


def max_word_overlap(examples: list[str], corpus: list[str]) -> np.ndarray:
    """Per example: the largest fraction of its distinct words that one corpus document contains."""
    index: dict[str, list[int]] = defaultdict(list)
    for i, doc in enumerate(corpus):
        for w in set(words(doc)):
            index[w].append(i)
    out = []
    for text in examples:
        vocab = set(words(text))
        hits = Counter(i for w in vocab for i in index.get(w, ()))
        out.append(max(hits.values()) / len(vocab) if hits and vocab else 0.0)
    return np.array(out)


def ngram_overlap(examples: list[str], corpus: list[str], n: int = 4) -> np.ndarray:
    """Per example: the fraction of its word n-grams that occur anywhere in the corpus (NaN when it has none)."""
    def grams(text: str) -> set[tuple[str, ...]]:
        w = words(text)
        return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}

    seen = set().union(*map(grams, corpus))
    return np.array([len(g & seen) / len(g) if (g := grams(t)) else np.nan for t in examples])


def roc(members: np.ndarray, non_members: np.ndarray, seed: int = 0, rounds: int = 200) -> dict:
    """ROC AUC of "higher score = member" with a bootstrap 95% interval, and TPR at 1% and 10% FPR."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.r_[np.ones(len(members)), np.zeros(len(non_members))]
    s = np.r_[members, non_members]
    fpr, tpr, _ = roc_curve(y, s)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(rounds):  # resample members and non-members separately: both classes in every round
        m, n = rng.choice(members, len(members)), rng.choice(non_members, len(non_members))
        boots.append(roc_auc_score(y, np.r_[m, n]))
    return {"auc": float(roc_auc_score(y, s)), "auc_95": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))],
            "tpr_at_1%_fpr": float(np.interp(0.01, fpr, tpr)), "tpr_at_10%_fpr": float(np.interp(0.10, fpr, tpr)),
            "members": len(members), "non_members": len(non_members)}


def _cosine_max(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)
    b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(1e-12)
    return (a @ b.T).max(1)


def _joined(texts: list[str], pairs: list[str] | None) -> list[str]:
    return texts if pairs is None else [f"{t} {p}" for t, p in zip(texts, pairs)]


def loss_scores(ds: DistilledDataset, task: Task, learner_name: str, seeds: int, texts: list[str],
                pairs: list[str] | None, labels: list[int]) -> np.ndarray:
    """Per candidate: minus its loss, averaged over ``seeds`` evaluation learners trained on the set (the
    protocol's recipe and learner seeds): higher means the learners fit it better, as they fit members."""
    import torch
    import torch.nn.functional as F

    from .evaluation import encoded_once, fit_on_set, run_recipe
    from .learners import FitLearner, get_learner

    learner = get_learner(learner_name).for_task(task)
    recipe, y = run_recipe(learner, task, ds), torch.tensor(labels)
    encode = None if isinstance(learner, FitLearner) else encoded_once(learner)
    total = torch.zeros(len(labels))
    for seed in range(seeds):
        fitted = fit_on_set(task, ds, learner, seed, recipe, encode=encode)
        total -= F.cross_entropy(fitted.logits(texts, pairs), y, reduction="none")
    return (total / seeds).numpy()


def audit(ds: DistilledDataset, task: Task, learner: str = "minilm-frozen", sample: int = 500, seed: int = 0,
          attack_learner: str | None = None, attack_seeds: int = 3) -> dict:
    """Every number of the audit as a dict (see the module doc); ``verdict`` sums it up in a line. The loss
    attack trains ``attack_learner`` (default: the learner a model-bound set is bound to, else ``learner``)."""
    from .decode import decode_to_text
    from .learners import get_learner

    if ds.kind == "generator":
        raise ArtifactError("a generator set holds a model, not examples: audit a text set it wrote (dilm saves the "
                            "set and, with save_generator, the generator)")
    ds.check_task(task)  # another task's classes would give a verdict about data the set never saw
    text_set = decode_to_text(ds) if ds.kind == "token-embeddings" else ds
    enc = get_learner(learner).for_task(task)
    if ds.kind == "features":
        bound = get_learner(ds.bound_learner())
        if bound.embedding_id != enc.embedding_id:
            raise ConfigError(f"the set's vectors live in {ds.bound_learner()!r}'s space, not {learner!r}'s: audit "
                              f"it with --learner {ds.bound_learner()}")
        ds.check_inputs(bound)
    train_t, train_p, train_y = task.columns("train")
    test_t, test_p, test_y = task.columns("test")
    rng = np.random.default_rng(seed)
    # the tokens beside the examples: a budget in examples rewards long examples (None: a set of vectors)
    tokens = {"tokens": set_tokens(ds, task=task)}
    if ds.kind == "text":
        tokens["tokens_learner"] = count_learner(ds)
    out: dict = {"set": {"method": ds.method, "kind": ds.kind, "size": len(ds), **tokens}, "task": task.name,
                 "learner": learner}
    if text_set.kind == "text":
        texts = _joined(text_set.texts, text_set.text_pairs)
        train_keys = {text_key(t, p) for t, p in zip(train_t, train_p or [None] * len(train_t))}
        copies = sum(text_key(t, p) in train_keys
                     for t, p in zip(text_set.texts, text_set.text_pairs or [None] * len(text_set)))
        to_train = max_word_overlap(texts, _joined(train_t, train_p))
        to_test = max_word_overlap(texts, _joined(test_t, test_p))
        out["copying"] = {"exact_copies": int(copies), "max_word_overlap_train": float(to_train.mean()),
                          "max_word_overlap_test": float(to_test.mean()),
                          "4gram_overlap_train": float(np.nanmean(ngram_overlap(texts, _joined(train_t, train_p))))
                          if len(texts) else None}
        set_vectors = enc.sentence_vectors(text_set.texts, text_set.text_pairs)
    else:  # a set of sentence vectors: its own vectors, no text to copy
        out["copying"] = None
        set_vectors = ds.tensors["features"].numpy()
    train_vectors = enc.sentence_vectors(train_t, train_p)
    ref = rng.choice(len(test_t), size=min(len(test_t), max(len(ds), 100)), replace=False)
    test_vectors = enc.sentence_vectors(test_t, test_p)
    out["nearest"] = {"set_to_train_cosine": float(_cosine_max(set_vectors, train_vectors).mean()),
                      "test_to_train_cosine": float(_cosine_max(test_vectors[ref], train_vectors).mean())}
    if task.name.endswith(":validation"):  # its test split is carved from train: non-members the method never read
        m = min(sample, len(train_t), len(test_t))
        members = rng.choice(len(train_t), size=m, replace=False)
        non_members = rng.choice(len(test_t), size=m, replace=False)
        attacker = attack_learner or (ds.bound_learner() if ds.kind != "text" else learner)

        def pick(t, p, y, rows):
            return [t[i] for i in rows], None if p is None else [p[i] for i in rows], [y[i] for i in rows]

        by_loss = [loss_scores(ds, task, attacker, attack_seeds, *pick(t, p, y, rows))
                   for t, p, y, rows in ((train_t, train_p, train_y, members), (test_t, test_p, test_y, non_members))]
        out["membership"] = {"distance": roc(_cosine_max(train_vectors[members], set_vectors),
                                             _cosine_max(test_vectors[non_members], set_vectors), seed),
                             "loss": {**roc(*by_loss, seed), "learner": attacker, "seeds": attack_seeds}}
    else:
        out["membership"] = None
    out["verdict"] = verdict(out)
    return out


def verdict(r: dict) -> str:
    parts = []
    c = r["copying"]
    if c is not None:
        parts.append(f"{c['exact_copies']} of {r['set']['size']} examples are verbatim training examples; "
                     f"mean maximal word overlap {100 * c['max_word_overlap_train']:.0f}% with train "
                     f"(ordinary level: {100 * c['max_word_overlap_test']:.0f}% with test)")
    n = r["nearest"]
    parts.append(f"nearest-training cosine {n['set_to_train_cosine']:.2f} (test examples: {n['test_to_train_cosine']:.2f})")
    if r["membership"] is None:
        name = r["task"].split(":")[0]
        parts.append(f"membership inference not run: distil on {name}:validation for non-members the method never read")
    else:
        for name, d in r["membership"].items():
            lo, hi = d["auc_95"]
            level = "strong" if lo > 0.75 else "some" if lo > 0.55 else "no clear"
            parts.append(f"{name} attack AUC {d['auc']:.2f} [{lo:.2f}, {hi:.2f}], TPR {100 * d['tpr_at_1%_fpr']:.0f}% "
                         f"at 1% FPR: {level} membership signal")
    return "; ".join(parts)
