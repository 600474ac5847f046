"""How a learner trains on a set: the Recipe, recorded in every evaluation result and artifact."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

from .config import Config
from .errors import ConfigError

# the losses a recipe names (their registry, with what each does: losses.py)
CROSS_ENTROPY = "cross-entropy"
ATTENTION_KL = "attention-kl"


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
    loss: str = CROSS_ENTROPY  # the training loss by name (losses.py): cross-entropy | attention-kl
    loss_options: dict = field(default_factory=dict)  # the named loss's options, e.g. attention-kl's weight
    precision: str = "float32"  # float32 | bf16 (autocast; fast only on CPUs with AVX512-BF16 or AMX, and GPUs)

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            self.betas = tuple(self.betas)  # type: ignore[assignment]  # JSON gives a list
        except TypeError:
            raise ConfigError(f"recipe needs betas to be two numbers in [0, 1), got {self.betas!r}") from None
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"recipe optimizer must be adamw or sgd, not {self.optimizer!r}")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ConfigError(f"recipe schedule must be cosine, linear or constant, not {self.schedule!r}")
        if self.precision not in ("float32", "bf16"):
            raise ConfigError(f"recipe precision must be float32 or bf16, not {self.precision!r}")
        # NaN and inf pass a plain `lr <= 0` test and only show up as failed runs: check before any training
        def number(name: str, ok, what: str, integer: bool = False) -> None:
            value = getattr(self, name)
            kind = numbers.Integral if integer else numbers.Real  # numpy's ints and floats too
            if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or not ok(value):
                flag = f" (--{name.replace('_', '-')})" if name in ("steps", "lr", "batch_size") else ""
                raise ConfigError(f"recipe needs {what}{flag}, got {name} {value!r}")

        number("steps", lambda v: v >= 1, "steps >= 1, an integer", integer=True)
        if self.batch_size is not None:
            number("batch_size", lambda v: v >= 1, "batch_size >= 1, an integer (or none: min(64, set size))",
                   integer=True)
        number("lr", lambda v: v > 0, "lr > 0, a finite number")
        number("warmup", lambda v: 0 <= v <= 1, "0 <= warmup <= 1")
        number("weight_decay", lambda v: v >= 0, "weight_decay >= 0, a finite number")
        number("eps", lambda v: v > 0, "eps > 0, a finite number")
        if not isinstance(self.loss, str) or not self.loss:
            raise ConfigError(f"recipe loss must be a loss name (cross-entropy, attention-kl), got {self.loss!r}")
        if not isinstance(self.loss_options, dict) or not all(
                isinstance(k, str) and isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
                for k, v in self.loss_options.items()):
            raise ConfigError(f"recipe loss_options must map option names to finite numbers, got "
                              f"{self.loss_options!r}")
        if len(self.betas) != 2 or not all(isinstance(b, numbers.Real) and not isinstance(b, bool) and 0 <= b < 1
                                           for b in self.betas):
            raise ConfigError(f"recipe needs betas to be two numbers in [0, 1), got {list(self.betas)!r}")

    @classmethod
    def from_dict(cls, values: dict) -> "Recipe":
        """Recipes written before the loss was named carry ``attention_weight``, the weight of the attention term for
        sets with attention labels: the weight of ``attention-kl`` where the recipe names that loss (a set that
        carries attention labels names it on loading), else nothing."""
        values = dict(values)
        if "attention_weight" in values:
            weight = values.pop("attention_weight")
            if values.get("loss") == ATTENTION_KL and weight is not None:
                values["loss_options"] = {**(values.get("loss_options") or {}), "weight": weight}
        return super().from_dict(values)

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
