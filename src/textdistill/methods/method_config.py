"""``MethodConfig``, the base of every method's config. A leaf: ``teacher`` builds its label options on it and ``base``
(whose ``Distiller`` applies those options) imports ``teacher``, so neither imports the other in a circle."""

from __future__ import annotations

from ..config import Config


class MethodConfig(Config):
    """Base of every method's config (a dataclass; help text in each field's metadata)."""
