"""The filter of what an LM wrote for a set, shared by the methods that write text (``condense``, and any other that
generates labelled examples): a generated example is kept only if it is no echo of the real examples its prompt
showed (``echoes``) and if a model of the task, trained on the real training split, gives it the label it was
written for (``label_consistent``, the label-consistency filter of CondenseLM and GRADMM)."""

from __future__ import annotations

import numpy as np
import torch

from ..data.task import text_key
from ..errors import ConfigError
from ..words import words

MIN_WORDS = 3  # shorter answers are refusals or fragments ("Sure!", "Positive.")


def echoes(candidate: tuple[str, str | None], members: list[tuple[str, str | None]], threshold: float) -> bool:
    """Whether a candidate repeats one of the prompt's real examples: the same text (case and whitespace aside),
    or at least ``threshold`` of the distinct words of the shorter of the two found in the other (a copy, a piece
    of one, one with a few words added or two joined)."""
    key, mine = text_key(*candidate), set(words(" ".join(p for p in candidate if p)))
    for member in members:
        theirs = set(words(" ".join(p for p in member if p)))
        # a member of a word or two would make every candidate using those words an echo: then only the
        # candidate's share counts
        shorter = min(len(mine), len(theirs)) if len(theirs) >= MIN_WORDS else len(mine)
        if text_key(*member) == key or (shorter and len(mine & theirs) / shorter >= threshold):
            return True
    return False


def label_consistent(scores: torch.Tensor | np.ndarray, labels: list[int] | np.ndarray | torch.Tensor) -> np.ndarray:
    """Whether each generated example's class as a judge sees it (the argmax of ``scores``, its logits or
    probabilities [n, C], e.g. ``teacher.teacher_logits`` of the generated texts) is the label it was written for
    (``labels``, n class ids): a boolean mask, True where the example keeps its label."""
    scores = scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if scores.ndim != 2 or labels.shape != (scores.shape[0],):
        raise ConfigError(f"label_consistent needs scores [n, C] and n labels, got scores of shape {scores.shape} and "
                          f"labels of shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= scores.shape[1]):
        raise ConfigError(f"label_consistent: labels must be class ids in [0, {scores.shape[1]}), got "
                          f"{sorted(set(labels.tolist()))}")
    return scores.argmax(1) == labels if len(labels) else np.zeros(0, dtype=bool)
