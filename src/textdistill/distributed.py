"""Data-parallel distillation under ``torchrun --nproc_per_node N`` (or ``accelerate launch``).

Every rank runs the same method with the same seed, so every random choice (real batches, learner
initialisations, the synthetic set itself) is identical across ranks; only the real data's work is split: each
rank takes every N-th row of a real batch, and the statistics (``gather_rows``) and gradients (``sum_across``)
are combined, so the result equals a single process's up to floating-point order; independent units of work
(mtt's experts) are dealt out across ranks; an optimiser that every rank holds (dilm's generator in stage 1)
steps on the summed shard gradients. Rank 0 writes the artifact and shared caches.
Backend gloo on CPU, nccl on GPUs. Without a process group everything here is the identity.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size): (0, 1) outside a process group."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def init_from_env(device: str = "cpu") -> bool:
    """Join the process group that torchrun or accelerate describe in the environment (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    if device.startswith("cuda"):  # "cuda" is then each rank's own GPU on its node
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return True


def is_main() -> bool:
    return world()[0] == 0


_taken = [0]  # real rows and units of work this process took since the last ``work_per_rank``


def shard(idx):
    """This rank's rows of a real batch (a tensor or a list of indices): every N-th from its rank."""
    rank, size = world()
    mine = idx[rank::size]
    _taken[0] += len(mine)
    return mine


def deal(n: int) -> list[int]:
    """This rank's share of ``n`` independent units of work (0..n-1): every N-th from its rank."""
    rank, size = world()
    mine = list(range(rank, n, size))
    _taken[0] += len(mine)
    return mine


def work_per_rank() -> list[int]:
    """What each rank took (rows and units) since the last call, in rank order: a run's record that the work was
    split. Every rank must call it (a collective)."""
    taken, _taken[0] = _taken[0], 0
    if world()[1] == 1:
        return [taken]
    parts: list = [None] * world()[1]
    dist.all_gather_object(parts, taken)
    return parts


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of a statistic, in rank order (a shard may be empty)."""
    if world()[1] == 1:
        return x
    parts: list = [None] * world()[1]
    dist.all_gather_object(parts, x.detach().cpu())
    return torch.cat(parts).to(x.device)


def sum_across(tensors: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """Each tensor summed over the ranks, in place."""
    if world()[1] > 1:
        for t in tensors:
            if t is not None:
                dist.all_reduce(t)
    return tensors


def agree(value):
    """Rank 0's value on every rank: for a decision the ranks must take together (e.g. whether to train)."""
    if world()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every rank (e.g. until each has written its share of a buffer)."""
    if world()[1] > 1:
        dist.barrier()


def finish() -> None:
    """Every rank waits for the others, then leaves the process group: a rank that has ended its part (not rank 0,
    which writes the set) and exits with the group alive can abort in gloo's teardown ("terminate called without
    an active exception") while rank 0 still works."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
