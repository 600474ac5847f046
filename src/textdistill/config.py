"""The base of every config dataclass (method configs, training recipes): dict round trips with checks."""

from __future__ import annotations

import math
import operator
from dataclasses import MISSING, asdict, dataclass, fields

from .errors import ConfigError

TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")


def to_bool(value, name: str) -> bool:
    """A boolean from YAML or the command line: true/false/1/0/yes/no in any case, nothing else."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if text in TRUE or text in FALSE:
        return text in TRUE
    raise ConfigError(f"{name} must be true or false (or 1/0, yes/no), got {value!r}")


def check_device(device: str) -> None:
    """Refuse a device this torch cannot use before any work starts (distill, evaluate, bench)."""
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} is not available: this torch ({torch.__version__}) finds no CUDA GPU; "
                          "use --device cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} is not available on this machine; use --device cpu")


BOUNDS = {"ge": (operator.ge, ">="), "gt": (operator.gt, ">"), "le": (operator.le, "<=")}  # field metadata keys


@dataclass
class Config:
    """Fields carry ``metadata={"help": ...}``: the CLI and YAML options come from them.

    Bounds in a field's metadata (``ge``, ``gt``, ``le``) are checked here, once for every config.
    """

    def __post_init__(self) -> None:
        for f in fields(self):
            value, where = getattr(self, f.name), f"{type(self).__name__}: {f.name} (--{f.name.replace('_', '-')})"
            if isinstance(f.default, bool):
                setattr(self, f.name, to_bool(value, where))
            bounds = [(op, f.metadata[op]) for op in BOUNDS if op in f.metadata]
            if not bounds or value is None:
                continue
            # inf passes a lower bound and NaN fails every bound with a misleading message: neither means anything
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{where} must be a finite number, got {value!r}")
            for op, limit in bounds:
                if not BOUNDS[op][0](value, limit):
                    raise ConfigError(f"{where} must be {BOUNDS[op][1]} {limit}, got {value!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict):
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown option(s) {sorted(unknown)} for {cls.__name__}; known: {sorted(known) or 'none'}")
        return cls(**values)

    @classmethod
    def options(cls) -> list[tuple[str, type, object, str]]:
        """(name, type, default, help) per field."""
        out = []
        for f in fields(cls):
            default = f.default if f.default is not MISSING else None
            out.append((f.name, type(default) if default is not None else str, default, f.metadata.get("help", "")))
        return out
