"""``get_learner``: a registered learner by name, or any model id or folder as a transformer learner. Apart from the
registry (``base``), since the fallback for names the registry lacks is a family (``transformer``) that builds on
``base``."""

from __future__ import annotations

from ..errors import ArgumentTypeError, ConfigError, ResourceMissing, kind_of
from ..resources import check_model
from .base import LEARNERS, Learner
from .transformer import learner_for


_instances: dict[str, Learner] = {}


def get_learner(name: str, max_length: int | None = None) -> Learner:
    """A registered learner, or any Hugging Face model id / local path as a fine-tuned transformer (a causal LM
    as a decoder classifier, anything else as an encoder); ``max_length`` (tokens) overrides its default of 64,
    as ``distill`` and ``evaluate`` do with the task's."""
    if not isinstance(name, str):
        raise ArgumentTypeError(f"learner must be a learner name (str), got {kind_of(name)}")
    if name not in _instances:
        if name not in LEARNERS:
            try:
                check_model(name)
            except ResourceMissing as e:
                raise ConfigError(f"unknown learner {name!r}: {e}. Registered learners: {', '.join(LEARNERS)}; "
                                  "other names must be a local model folder or a Hugging Face hub id") from None

        _instances[name] = LEARNERS[name]() if name in LEARNERS else learner_for(name)
    return _instances[name] if max_length is None else _instances[name].with_max_length(max_length)
