"""The base of every config dataclass (method configs, training recipes): dict round trips with checks."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields

from .errors import ConfigError


@dataclass
class Config:
    """Fields carry ``metadata={"help": ...}``: the CLI and YAML options come from them."""

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
