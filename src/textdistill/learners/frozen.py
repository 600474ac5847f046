"""A linear head on frozen sentence vectors: the cheapest learner, and the `features` space."""

from __future__ import annotations

import numpy as np
import torch
from torch.func import functional_call

from ..recipe import Recipe
from ..seeds import check_seed
from ..params import Params
from .base import FeatureLearner, Learner, register_learner
from .transformer import TransformerLearner


class FrozenEncoderLearner(FeatureLearner):
    def __init__(self, name: str, encoder: str) -> None:
        self.name = name
        self.encoder = TransformerLearner(encoder)
        self.max_length = self.encoder.max_length

    @property
    def default_recipe(self) -> Recipe:
        return Recipe(steps=300, lr=1e-2, warmup=0.1, schedule="cosine", weight_decay=0.0)

    full_data = {"epochs": 20, "batch_size": 64}  # a linear probe: many cheap epochs

    @property
    def embedding_id(self) -> str:
        return self.encoder.embedding_id  # same vectors as the encoder's coreset space: one cache

    def input_width(self) -> int | None:
        from transformers import AutoConfig

        return int(AutoConfig.from_pretrained(self.encoder.path).hidden_size)  # the sentence vectors' width

    def build(self, num_labels: int, seed: int) -> torch.nn.Module:
        dim = self.input_width()
        with torch.random.fork_rng():
            torch.manual_seed(check_seed(seed, "build"))
            return torch.nn.Linear(dim, num_labels)

    def encode(self, texts: list[str], pairs: list[str] | None = None) -> dict[str, torch.Tensor]:
        return {"features": torch.from_numpy(self.sentence_vectors(texts, pairs))}

    def forward(self, model: torch.nn.Module, params: Params, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(model, params, (inputs["features"],))

    def head(self, model: torch.nn.Module) -> torch.nn.Module:
        return model  # the whole model is the linear head; its input is the frozen sentence vector

    def _sentence_vectors(self, texts: list[str], pairs: list[str] | None) -> np.ndarray:
        # Same embedding_id and max_length as the encoder: one cache entry, computed and written once.
        return self.encoder._sentence_vectors(texts, pairs)

    def with_max_length(self, max_length: int) -> Learner:
        out = super().with_max_length(max_length)
        if out is not self:
            out.encoder = self.encoder.with_max_length(max_length)  # the vectors are the encoder's
        return out

    def describe(self) -> dict:
        return {**super().describe(), "encoder": self.encoder.describe()}


@register_learner("minilm-frozen", "linear head on frozen mean-pooled all-MiniLM-L6-v2 vectors (cheap)")
def _minilm_frozen() -> Learner:
    return FrozenEncoderLearner("minilm-frozen", "minilm")


@register_learner("mpnet-frozen", "linear head on frozen mean-pooled all-mpnet-base-v2 vectors (768-d)")
def _mpnet_frozen() -> Learner:
    return FrozenEncoderLearner("mpnet-frozen", "mpnet")
