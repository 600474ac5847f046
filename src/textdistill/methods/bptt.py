"""bptt: learn synthetic token-embedding sentences, labels and step sizes by unrolling a learner's training.

Wang et al. 2018 (dataset distillation); Sucholutsky & Schonlau 2019 (text, learnable soft labels);
Li & Li 2021 (soft labels and step sizes for text). Each outer step takes a fresh learner, trains it for
T SGD steps on the synthetic set (the one training loop, differentiably), measures its loss on a batch
of real data, and moves the synthetic embeddings, labels and learning rates down that loss.

With ``text_space`` project, softmax or gumbel (``learned_set``) every unrolled step trains on real tokens' embeddings
and the set is written as their text, which any learner trains on with its own recipe; the learned step sizes, which
belong to the learner the set was made with, stay in the set's log.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import register_method
from .unroll import UnrollConfig, UnrolledDistiller


@dataclass
class BPTTConfig(UnrollConfig):
    """bptt's options: those of every unrolled method (``unroll``)."""


@register_method
class BPTT(UnrolledDistiller):
    name = "bptt"
    description = "token-embedding sentences, soft labels and step sizes learned through unrolled training"
    Config = BPTTConfig
