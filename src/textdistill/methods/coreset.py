"""Coreset baselines: real examples picked per class in the learner's sentence-embedding space."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..data import Task
from ..learners import Learner
from ..distilled import DistilledDataset
from .base import Distiller, class_indices, kmeans_nearest, register_method
from .teacher import TeacherLabelsConfig


class CoresetDistiller(Distiller):
    Config = TeacherLabelsConfig  # real examples, with their own labels or a teacher's
    needs_vectors = True

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
