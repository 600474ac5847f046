"""Learners: models that train on a (distilled) set, built fresh from a seed, with a functional forward. The
base class and the registry live in ``base``; the families, one module each, are imported here to register."""

from .base import (  # noqa: F401
    DESCRIPTIONS, LEARNERS, AttentionLearner, FeatureLearner, Learner, TokenLearner, get_learner, list_learners,
    register_learner, unit)
from . import frozen, glove, transformer  # noqa: E402,F401  (registration)
