"""Seed ranges: the learners a method trains, the learners evaluation trains and the teacher never share a stream.

torch's CPU generator keeps only the low 32 bits of a seed (``manual_seed(2**32 + m)`` draws what
``manual_seed(m)`` draws), so disjoint streams need disjoint ranges below 2**32.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .errors import ConfigError

SEED_LIMIT = 2**32
METHOD_SEED_LIMIT = 2**31  # every learner or generator a method seeds: [0, 2**31)
EVAL_SEEDS = 2**31  # evaluation learner m is seeded EVAL_SEEDS + m (reports still call it seed m)
MAX_EVAL_RUNS = 2**30
TEACHER_SEED = EVAL_SEEDS + MAX_EVAL_RUNS  # the teacher of teacher labels, trained once per task
# A set seed s gives its methods' learners seeds like s * 1_000_003 + step: below 2**31 while s < 2048.
MAX_SET_SEED = 2048


def check_seed(seed: int, where: str) -> int:
    """``seed`` as an int, refused where torch would fold it onto another seed's stream."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise ConfigError(f"{where}: seed {seed!r} is not an integer in [0, 2**32) (torch keeps 32 bits of a seed)")
    return seed


def check_set_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SET_SEED:
        raise ConfigError(f"set seed {seed!r} must be an integer in [0, {MAX_SET_SEED}): the seeds of the learners "
                          "a method trains are derived from it and must stay below evaluation's")
    return seed


def eval_seed(run: int) -> int:
    """The seed of evaluation run ``run``."""
    if not 0 <= run < MAX_EVAL_RUNS:
        raise ConfigError(f"evaluation run {run} is outside [0, 2**30)")
    return EVAL_SEEDS + run


@contextmanager
def torch_rng_kept(device=None) -> Iterator[None]:
    """torch's global random state as the block found it, back after the block: the CPU generator's and, where
    ``device`` is a GPU, that GPU's (only it: forking every visible GPU is slow and warns). A section that seeds the
    global generators inside (``torch.manual_seed``) draws what it drew before and leaves the caller's stream alone."""
    import torch

    device = torch.device(device if device is not None else "cpu")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield
