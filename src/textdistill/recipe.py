"""How a learner trains on a set: the Recipe, recorded in every evaluation result and artifact."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import Config
from .errors import ConfigError


@dataclass
class Recipe(Config):
    """How a learner trains on a (small) set: part of every evaluation result and artifact."""

    steps: int = 200
    lr: float = 1e-4
    batch_size: int | None = None  # None: min(64, n)
    warmup: float = 0.5  # fraction of steps with a linear warm-up
    schedule: str = "cosine"  # cosine | linear | constant
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    optimizer: str = "adamw"  # adamw | sgd (unrolled methods learn SGD step sizes: Adam's first step is sign(g))
    dropout: bool = True  # False: train in eval mode (what unrolled inner loops do)
    attention_weight: float = 1.0  # weight of the attention-label KL term, for sets that carry attention labels
    precision: str = "float32"  # float32 | bf16 (autocast; fast only on CPUs with AVX512-BF16 or AMX, and GPUs)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.betas = tuple(self.betas)  # type: ignore[assignment]  # JSON gives a list
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"recipe optimizer must be adamw or sgd, not {self.optimizer!r}")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ConfigError(f"recipe schedule must be cosine, linear or constant, not {self.schedule!r}")
        if self.precision not in ("float32", "bf16"):
            raise ConfigError(f"recipe precision must be float32 or bf16, not {self.precision!r}")
        small_batch = self.batch_size is not None and self.batch_size < 1
        if self.steps < 1 or self.lr <= 0 or not 0 <= self.warmup <= 1 or small_batch:
            raise ConfigError(f"recipe needs steps >= 1, lr > 0, 0 <= warmup <= 1 and batch_size >= 1, got {self}")

    @classmethod
    def sgd(cls, steps: int, lr: float, batch_size: int) -> "Recipe":
        """Plain SGD at a constant step size without weight decay or dropout: the inner loops of the matching
        methods and the recipes of the sets they learn (their students train this way)."""
        return cls(steps=steps, lr=lr, batch_size=batch_size, warmup=0.0, schedule="constant", weight_decay=0.0,
                   optimizer="sgd", dropout=False)

    def lr_at(self, step: int) -> float:
        warm = int(self.warmup * self.steps)
        if step < warm:
            return self.lr * (step + 1) / warm
        progress = (step - warm) / max(1, self.steps - warm)
        if self.schedule == "cosine":
            return self.lr * 0.5 * (1 + math.cos(math.pi * progress))
        if self.schedule == "linear":
            return self.lr * (1 - progress)
        return self.lr
