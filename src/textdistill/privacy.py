"""Differential privacy: the Gaussian mechanism on clipped per-example statistics, and its accounting.

The accountant is Google's ``dp-accounting`` (RDP): a run of ``steps`` Poisson-subsampled Gaussian releases
at ``sampling_rate`` with noise multiplier sigma is (epsilon, delta)-DP; ``noise_multiplier`` finds the
smallest sigma that meets a target epsilon. Each training example belongs to one class, so the per-class
releases of one step compose in parallel: one Gaussian event per step.

Only public quantities shape the mechanism: the number of training examples N (treated as public, as DP-SGD's
accountants do), the number of classes and the options. Every row is sampled with one rate, and each class's
clipped sum is divided by the expected batch, not by anything counted in the private data. The sampling and
the noise come from the operating system's cryptographic generator, never from the set's seed: a published
set records its seed, and a seeded mechanism could be replayed from it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import ConfigError

RANDOMNESS = ("os.urandom (the operating system's cryptographic generator), unseeded: the set's seed does not "
              "replay the sampling or the noise")


def epsilon(noise_multiplier: float, delta: float, sampling_rate: float, steps: int) -> float:
    """The epsilon that the RDP accountant gives the run."""
    import logging

    import dp_accounting

    logging.getLogger("absl").setLevel(logging.ERROR)  # orders it cannot evaluate are skipped, with a warning each

    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier)), steps)
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


def noise_multiplier(target_epsilon: float, delta: float, sampling_rate: float, steps: int) -> float:
    """The smallest noise multiplier (to 0.1%) whose run has epsilon <= ``target_epsilon``."""
    if target_epsilon <= 0 or not 0 < delta < 1 or not 0 < sampling_rate <= 1 or steps < 1:
        raise ConfigError(f"DP needs epsilon > 0, 0 < delta < 1, 0 < sampling rate <= 1 and steps >= 1; got "
                          f"{target_epsilon}, {delta}, {sampling_rate}, {steps}")
    lo, hi = 1e-2, 1.0
    while epsilon(hi, delta, sampling_rate, steps) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e5:
            raise ConfigError(f"no noise multiplier reaches epsilon {target_epsilon} in {steps} steps")
    while hi - lo > 1e-3 * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if epsilon(mid, delta, sampling_rate, steps) > target_epsilon else (lo, mid)
    return hi


def default_delta(n: int) -> float:
    """The delta of a run on ``n`` training examples when none is given: 1e-5, or a tenth of 1/n for larger
    tasks (a delta of 1/n would allow publishing one example outright)."""
    return min(1e-5, 1 / (10 * n))


class SecureRandom:
    """The mechanism's random draws, Poisson sampling and Gaussian noise, from ``os.urandom``: there is no seed,
    so nothing a set records (its seed included) replays them. Under torchrun rank 0's bytes are broadcast, as
    every rank must sample and noise alike."""

    chunk = 1 << 22  # normal draws made at a time (bounds the float64 work arrays)

    def uniform(self, n: int) -> np.ndarray:
        """``n`` draws uniform on [0, 1), with 53 random bits each."""
        from .distributed import agree

        raw = np.frombuffer(agree(os.urandom(8 * n)), dtype=np.uint64)
        return (raw >> np.uint64(11)).astype(np.float64) * 2.0**-53

    def sample(self, rows: np.ndarray, rate: float) -> np.ndarray:
        """Poisson sampling: each of ``rows`` kept independently with probability ``rate``."""
        rows = np.asarray(rows)
        return rows[self.uniform(len(rows)) < rate]

    def normal(self, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal draws of ``shape`` (Box-Muller: each pair of uniforms gives two independent normals)."""
        n = math.prod(shape)
        out = torch.empty(n, dtype=dtype)
        for start in range(0, n, self.chunk):
            m = min(self.chunk, n - start)
            half = (m + 1) // 2
            u = self.uniform(2 * half)
            radius = np.sqrt(-2 * np.log1p(-u[:half]))  # 1 - u lies in (0, 1]: the log is finite
            angle = 2 * np.pi * u[half:]
            both = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])
            out[start:start + m] = torch.from_numpy(both[:m])
        return out.view(tuple(shape))


def noisy_mean(rows: torch.Tensor, clip: float, sigma: float, expected: float, source: SecureRandom) -> torch.Tensor:
    """The Gaussian mechanism on a mean: each row clipped to L2 norm ``clip``, summed, N(0, (sigma clip)^2)
    noise (drawn from ``source``) added, divided by the expected (public) number of rows, not the sampled one."""
    norms = rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    total = (rows * (clip / norms).clamp(max=1.0)).sum(0)
    noise = source.normal(total.shape, total.dtype) * sigma * clip
    return (total + noise.to(total.device)) / expected


def plan(mechanism: str, expected_batch: int, num_classes: int, n: int, target_epsilon: float, delta: float,
         clip: float, steps: int) -> dict:
    """A DP run's mechanism and accounting, as recorded in its set's provenance: one Poisson-subsampled Gaussian release
    per step (the classes are disjoint, so their releases compose in parallel) with the smallest noise
    multiplier that meets ``target_epsilon``. Public sizes only: every one of the ``n`` training rows is sampled
    at rate ``num_classes * expected_batch / n`` (``expected_batch`` rows a class on average when the classes are
    balanced), and each class's clipped sum is divided by that expected batch (so with unbalanced classes a
    class's released mean is scaled by its share, n_c C / N: the price of reading no class count; a cosine
    distance does not see it). ``delta`` 0: ``default_delta``."""
    if n < 1 or num_classes < 1:
        raise ConfigError(f"DP needs training examples and classes; got {n} examples in {num_classes} classes")
    rate = min(1.0, num_classes * expected_batch / n)
    delta = delta or default_delta(n)
    if delta >= 1 / n:
        raise ConfigError(f"dp_delta {delta:g} is not below 1/N = 1/{n}, N the training examples: such a delta "
                          f"allows publishing an example outright; use dp_delta 0 (the default, "
                          f"{default_delta(n):g} here) or a smaller one")
    sigma = noise_multiplier(target_epsilon, delta, rate, steps)
    return {"mechanism": f"{mechanism}, Poisson-subsampled; RDP accountant (dp-accounting)",
            "epsilon": epsilon(sigma, delta, rate, steps), "delta": delta, "noise_multiplier": sigma, "clip": clip,
            "sampling_rate": rate, "expected_batch": rate * n / num_classes, "steps": steps, "randomness": RANDOMNESS}


def publishable(ds, task, dp: dict):
    """A DP run's set as it may be published: the mechanism in its provenance and, of the task, only what is public
    (no fingerprint of the training data, no training rows)."""
    ds.task = task.describe(private=True)
    ds.source_indices = None
    ds.provenance.dp = dp
    return ds


def is_private(ds) -> bool:
    """Whether a distilled set was made under differential privacy (its provenance records the mechanism)."""
    return ds.provenance.dp is not None


@dataclass
class DPOptions:
    """The differential-privacy options of a method's config (mixed in; ``dp_epsilon`` 0: off)."""

    dp_epsilon: float = field(default=0.0, metadata={"ge": 0, "help": "differential privacy: target epsilon (0: off)"})
    dp_delta: float = field(default=0.0, metadata={
        "ge": 0, "le": 0.1, "help": "differential privacy: delta (0: min(1e-5, 1 / (10 N)), N the training examples)"})
    dp_clip: float = field(default=1.0, metadata={"gt": 0, "help": "differential privacy: L2 clip of each example"})

    def dp_plan(self, mechanism: str, real_batch: int, num_classes: int, n: int, steps: int) -> dict:
        return plan(mechanism, real_batch, num_classes, n, self.dp_epsilon, self.dp_delta, self.dp_clip, steps)
