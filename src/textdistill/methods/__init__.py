"""Distillation methods: a registry of Distiller classes, each with one config dataclass (``base``), and the
methods, one module each (imported here to register them)."""

from .base import (  # noqa: F401  (re-exported)
    METHODS, Distiller, MethodConfig, check_finite, class_indices, descend, get_method, list_methods, register_method,
    thin)
from . import (  # noqa: E402,F401  (registration, in the registry's order: bptt before its variant attention_labels)
    bptt, attention_labels, condense, coreset, dc, dilm, dm, embed_invert, from_file, gradmm, learned_labels,
    mtt, prompt_mtt, unidetox)
