"""Trajectory matching, shared by the methods that match expert trajectories (``mtt``, ``prompt-mtt``): an expert's
parameters at an epoch of its saved trajectory, and the normalised distance of a student from the target."""

from __future__ import annotations

import torch


def epoch_params(trajectory: dict[str, torch.Tensor], epoch: int) -> dict[str, torch.Tensor]:
    """The parameters a trajectory saved at ``epoch`` (its keys are ``epoch/name``), by name."""
    prefix = f"{epoch}/"
    return {k[len(prefix):]: v for k, v in trajectory.items() if k.startswith(prefix)}


def trajectory_loss(student: dict[str, torch.Tensor], start: dict[str, torch.Tensor],
                    target: dict[str, torch.Tensor]) -> torch.Tensor:
    """||student - target||^2 / ||start - target||^2 over all trainable parameters; 0 when they coincide."""
    num = sum(((student[k] - target[k]) ** 2).sum() for k in target)
    den = sum(((start[k] - target[k]) ** 2).sum() for k in target)
    return num / den.clamp_min(1e-12)
