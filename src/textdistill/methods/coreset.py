"""Coreset baselines: real examples picked per class in the learner's sentence-embedding space (or, ``pack``, glued
together per cluster up to the learner's max length)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ..data import Task
from ..errors import ConfigError
from ..learners import Learner
from ..distilled import DistilledDataset
from ..tokens import token_counts, token_reader
from .base import Distiller, class_indices, kmeans_nearest, register_method
from .teacher import TeacherLabelsConfig


class CoresetDistiller(Distiller):
    Config = TeacherLabelsConfig  # real examples, with their own labels or a teacher's
    needs_vectors = True
    task_kinds = ("classification", "choice", "continuation")  # real picks serve any task

    def select(self, vectors: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        """Positions (into ``vectors``, one class) of the k chosen examples."""
        raise NotImplementedError

    def run(self, task: Task, dpc: int, learner: Learner, seed: int = 0) -> DistilledDataset:
        texts, pairs, labels = task.columns("train")
        per_class = class_indices(labels, task.spec.classes, dpc)
        vectors = learner.sentence_vectors(texts, pairs) if self.needs_vectors else None
        rng = np.random.default_rng(seed)
        chosen = []
        for idx in per_class:
            picked = self.select(vectors[idx] if vectors is not None else idx[:, None].astype(float), dpc, rng)
            chosen.extend(idx[picked].tolist())
        import torch

        return self._artifact(
            task, seed, kind="text", texts=[texts[i] for i in chosen],
            text_pairs=None if pairs is None else [pairs[i] for i in chosen],
            labels=torch.tensor([labels[i] for i in chosen]), source_indices=chosen,
        )


@register_method
class RandomSelection(CoresetDistiller):
    name = "random"
    description = "uniformly random real examples per class"
    needs_vectors = False

    def select(self, vectors, k, rng):
        return rng.choice(len(vectors), size=k, replace=False)


@register_method
class KCenter(CoresetDistiller):
    name = "kcenter"
    description = "greedy farthest-point (k-center) selection from a seeded random start"

    def select(self, vectors, k, rng):
        picked = [int(rng.integers(len(vectors)))]
        dist = np.linalg.norm(vectors - vectors[picked[0]], axis=1)
        dist[picked[0]] = -np.inf  # never again: with fewer distinct vectors than k, unpicked duplicates come next
        while len(picked) < k:
            nxt = int(dist.argmax())
            picked.append(nxt)
            dist = np.minimum(dist, np.linalg.norm(vectors - vectors[nxt], axis=1))
            dist[nxt] = -np.inf
        return np.array(picked)


@dataclass
class KMeansConfig(TeacherLabelsConfig):
    n_init: int = field(default=10, metadata={"ge": 1, "help": "k-means restarts per class"})


@register_method
class KMeansNearest(CoresetDistiller):
    name = "kmeans"
    description = "per-class k-means; the real example nearest each centroid (DiLM's k-centers)"
    Config = KMeansConfig

    def select(self, vectors, k, rng):
        return kmeans_nearest(vectors, k, rng, self.config.n_init)


@register_method
class Herding(CoresetDistiller):
    name = "herding"
    description = "herding (Welling 2009): greedily keep the running mean closest to the class mean"

    def select(self, vectors, k, rng):
        mean = vectors.mean(0)
        picked: list[int] = []
        total = np.zeros_like(mean)
        for step in range(1, k + 1):
            gap = np.linalg.norm(mean - (total + vectors) / step, axis=1)
            gap[picked] = np.inf
            nxt = int(gap.argmin())
            picked.append(nxt)
            total += vectors[nxt]
        return np.array(picked)


@register_method
class Pack(Distiller):
    """The information-matched baseline: real sentences glued up to the learner's max length. A condensed example
    that fills its tokens must beat this, not one real sentence."""

    name = "pack"
    description = "per-class k-means; each example glues one cluster's real members, nearest first, up to max length"
    Config = KMeansConfig

    def run(self, task: Task, dpc: int, learner: Learner, seed: int = 0) -> DistilledDataset:
        from sklearn.cluster import KMeans

        texts, pairs, labels = task.columns("train")
        if pairs is not None:
            raise ConfigError(f"method 'pack' glues sentences into one text, but task {task.name!r} holds sentence "
                              "pairs: glued pairs would pair every first text with every second one; use kmeans")
        per_class = class_indices(labels, task.spec.classes, dpc)
        vectors = learner.sentence_vectors(texts)
        reader = token_reader(learner)  # raises for a learner whose tokens cannot be counted, before any k-means
        limit = reader.max_length
        rng = np.random.default_rng(seed)  # drawn as kmeans draws: the same seed gives kmeans's clusters
        packed, members, truncated = [], [], []
        for idx in per_class:
            x = vectors[idx]
            km = KMeans(n_clusters=dpc, n_init=self.config.n_init, random_state=int(rng.integers(2**31))).fit(x)
            firsts: set[int] = set()
            for j, centre in enumerate(km.cluster_centers_):
                order = np.argsort(np.linalg.norm(x - centre, axis=1), kind="stable")
                own = [int(i) for i in order if km.labels_[i] == j]
                # a cluster k-means left empty (fewer distinct vectors than clusters): its nearest unused example
                own = own or [int(next(i for i in order if int(i) not in firsts))]
                firsts.add(own[0])
                text, used, cut = _glue([texts[i] for i in idx[own]], reader, limit)
                packed.append(text)
                members.append([int(i) for i in idx[own[:used]]])
                if cut:
                    truncated.append(len(packed) - 1)
        import torch

        return self._artifact(
            task, seed, kind="text", texts=packed, labels=torch.tensor([labels[m[0]] for m in members]),
            source_indices=[i for m in members for i in m],
            log={"members": members, "truncated": truncated, "max_length": limit,
                 "tokens": token_counts(reader, packed).tolist()},
        )


def _glue(candidates: list[str], reader: Learner, limit: int) -> tuple[str, int, bool]:
    """The candidates, in order, joined by spaces while the reader's tokens stay within ``limit``: (the text, how
    many candidates it holds, whether the first had to be cut to fit on its own)."""
    def fits(text: str) -> bool:
        return int(token_counts(reader, [text], cut=False)[0]) <= limit

    if not fits(candidates[0]):
        return _cut(candidates[0], fits, limit, reader), 1, True
    text, used = candidates[0], 1
    for nxt in candidates[1:]:
        if not fits(f"{text} {nxt}"):
            break
        text, used = f"{text} {nxt}", used + 1
    return text, used, False


def _cut(text: str, fits, limit: int, reader: Learner) -> str:
    """The longest prefix of ``text`` that fits: whole words where one does, else characters of the first word."""
    def longest(cuts: list[int]) -> int:
        """The largest position in ``cuts`` (ascending) whose prefix fits, or 0 where none does."""
        lo, hi, best = 0, len(cuts) - 1, 0
        while lo <= hi:
            mid = (lo + hi) // 2
            if fits(text[: cuts[mid]]):
                best, lo = cuts[mid], mid + 1
            else:
                hi = mid - 1
        return best

    end = longest([m.end() for m in re.finditer(r"\S+", text)])
    if not end:
        start = len(text) - len(text.lstrip())
        end = longest(list(range(start + 1, start + len(text.split(maxsplit=1)[0]) + 1)))
    if not end:
        raise ConfigError(f"method 'pack': learner {reader.name!r} cannot read even one character within its max "
                          f"length of {limit} tokens; raise the task's max_length")
    return text[:end]
