"""Learners: models that train on a (distilled) set, built fresh from a seed, with a functional forward (or, a
``FitLearner`` such as SetFit, with their own fit). The base classes and the registry live in ``base``, ``get_learner``
in ``lookup``; the families, one module each, are imported here to register."""

from .base import (  # noqa: F401
    DESCRIPTIONS, LEARNERS, AttentionLearner, FeatureLearner, FitLearner, Fitted, Learner, TokenLearner, list_learners,
    register_learner, unit)
from .lookup import get_learner  # noqa: F401
from . import causal_lm, frozen, glove, setfit, transformer  # noqa: E402,F401  (registration)
