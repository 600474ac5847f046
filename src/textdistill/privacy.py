"""Differential privacy: the Gaussian mechanism on clipped per-example statistics, and its accounting.

The accountant is Google's ``dp-accounting`` (RDP): a run of ``steps`` Poisson-subsampled Gaussian releases
at ``sampling_rate`` with noise multiplier sigma is (epsilon, delta)-DP; ``noise_multiplier`` finds the
smallest sigma that meets a target epsilon. Each training example belongs to one class, so the per-class
releases of one step compose in parallel: one Gaussian event per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import ConfigError


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


def noisy_mean(rows: torch.Tensor, clip: float, sigma: float, expected: float, gen: torch.Generator) -> torch.Tensor:
    """The Gaussian mechanism on a mean: each row clipped to L2 norm ``clip``, summed, N(0, (sigma clip)^2)
    noise added, divided by the expected (public) number of rows, not the sampled one."""
    norms = rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    total = (rows * (clip / norms).clamp(max=1.0)).sum(0)
    noise = torch.randn(total.shape, generator=gen, dtype=total.dtype) * sigma * clip
    return (total + noise.to(total.device)) / expected


def plan(mechanism: str, real_batch: int, class_sizes: list[int], target_epsilon: float, delta: float, clip: float,
         steps: int) -> dict:
    """A DP run's mechanism and accounting, as recorded in its set's log: one Poisson-subsampled Gaussian release
    per step (the classes are disjoint, so their releases compose in parallel) at the largest per-class sampling
    rate, with the smallest noise multiplier that meets ``target_epsilon``."""
    rate = max(min(1.0, real_batch / n) for n in class_sizes)
    sigma = noise_multiplier(target_epsilon, delta, rate, steps)
    return {"mechanism": f"{mechanism}, Poisson-subsampled; RDP accountant (dp-accounting)",
            "epsilon": epsilon(sigma, delta, rate, steps), "delta": delta, "noise_multiplier": sigma, "clip": clip,
            "sampling_rate": rate, "steps": steps}


@dataclass
class DPOptions:
    """The differential-privacy options of a method's config (mixed in; ``dp_epsilon`` 0: off)."""

    dp_epsilon: float = field(default=0.0, metadata={"ge": 0, "help": "differential privacy: target epsilon (0: off)"})
    dp_delta: float = field(default=1e-5, metadata={"gt": 0, "le": 0.1, "help": "differential privacy: delta"})
    dp_clip: float = field(default=1.0, metadata={"gt": 0, "help": "differential privacy: L2 clip of each example"})

    def dp_plan(self, mechanism: str, real_batch: int, class_sizes: list[int], steps: int) -> dict:
        return plan(mechanism, real_batch, class_sizes, self.dp_epsilon, self.dp_delta, self.dp_clip, steps)
