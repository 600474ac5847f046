"""Small from-scratch models over frozen GloVe 6B 50d: the learners of the early text-distillation papers."""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
import torch
import torch.nn as nn
from torch.func import functional_call

from ..resources import glove_vectors, model_revision
from ..recipe import Recipe
from ..seeds import check_seed
from ..params import Params
from .base import Learner, TokenLearner, register_learner

TOKEN = re.compile(r"[\w']+|[^\w\s]")
PAD, UNK = 0, 1  # rows 0 and 1 of the embedding matrix; GloVe words start at row 2


@lru_cache(maxsize=1)
def glove_table() -> tuple[dict[str, int], torch.Tensor]:
    """Word -> row, and the frozen [2 + 400000, 50] matrix (zero PAD row, mean-vector UNK row)."""
    words, vectors = glove_vectors()
    matrix = np.zeros((len(words) + 2, vectors.shape[1]), dtype=np.float32)
    matrix[2:] = vectors
    matrix[UNK] = matrix[2:].mean(0)
    return {w: i + 2 for i, w in enumerate(words)}, torch.from_numpy(matrix)


class GloveEncoder(nn.Module):
    def __init__(self, num_labels: int, kind: str) -> None:
        super().__init__()
        _, matrix = glove_table()
        self.register_buffer("embedding", matrix, persistent=False)  # frozen and shared between models
        dim = matrix.shape[1]
        self.kind = kind
        if kind == "cnn":
            self.convs = nn.ModuleList(nn.Conv1d(dim, 100, k, padding=k // 2) for k in (3, 4, 5))
            out = 300
        else:
            self.lstm = nn.LSTM(dim, 128, batch_first=True, bidirectional=True)
            out = 256
        self.dropout = nn.Dropout(0.5)
        self.head = nn.Linear(out, num_labels)

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None):
        x = inputs_embeds if inputs_embeds is not None else nn.functional.embedding(input_ids, self.embedding)
        mask = attention_mask.unsqueeze(-1).to(x.dtype)
        if self.kind == "cnn":
            h = x.transpose(1, 2)
            pooled = []
            for conv in self.convs:
                c = torch.relu(conv(h))[:, :, : x.shape[1]].transpose(1, 2)
                pooled.append(c.masked_fill(mask == 0, -1e4).max(1).values)
            z = torch.cat(pooled, -1)
        else:
            # packed: the backward direction starts at each sentence's last real token, so a sentence reads the
            # same whatever it is batched with (padded, it would first run through its neighbours' padding)
            lengths = attention_mask.sum(1).clamp_min(1).cpu()
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            h, _ = nn.utils.rnn.pad_packed_sequence(self.lstm(packed)[0], batch_first=True,
                                                    total_length=x.shape[1])
            z = (h * mask).sum(1) / mask.sum(1).clamp_min(1)
        return self.head(self.dropout(z))


class GloveLearner(TokenLearner):
    pair_separator = "|"  # encode joins a pair as "text | pair"

    def __init__(self, name: str, kind: str, max_length: int = 64) -> None:
        self.name, self.kind, self.max_length = name, kind, max_length

    @property
    def default_recipe(self) -> Recipe:
        return Recipe(steps=300, lr=1e-3, warmup=0.1, schedule="cosine", weight_decay=0.01)

    full_data = {"epochs": 10, "batch_size": 64}

    @property
    def embedding_id(self) -> str:
        return "glove-50d-mean"  # both GloVe learners share the coreset space

    def tokenize(self, text: str) -> list[int]:
        vocab, _ = glove_table()
        return [vocab.get(t, UNK) for t in TOKEN.findall(text.lower())][: self.max_length] or [UNK]

    def build(self, num_labels: int, seed: int) -> torch.nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(check_seed(seed, "build"))
            return GloveEncoder(num_labels, self.kind)

    def encode(self, texts: list[str], pairs: list[str] | None = None) -> dict[str, torch.Tensor]:
        joined = texts if pairs is None else [f"{a} | {b}" for a, b in zip(texts, pairs)]
        ids = [self.tokenize(t) for t in joined]
        width = max(len(i) for i in ids)
        input_ids = torch.full((len(ids), width), PAD, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def forward(self, model: torch.nn.Module, params: Params, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(model, params, args=(), kwargs=inputs)

    def input_embeddings(self, model: torch.nn.Module, params: Params, input_ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(input_ids, glove_table()[1])

    def vocabulary(self) -> tuple[list[str], torch.Tensor]:
        vocab, matrix = glove_table()
        return ["[PAD]", "[UNK]", *vocab], matrix

    def _sentence_vectors(self, texts: list[str], pairs: list[str] | None) -> np.ndarray:
        """Mean GloVe vector of the tokens."""
        enc = self.encode(texts, pairs)
        x = nn.functional.embedding(enc["input_ids"], glove_table()[1])
        mask = enc["attention_mask"].unsqueeze(-1).float()
        return ((x * mask).sum(1) / mask.sum(1)).numpy()

    def describe(self) -> dict:
        return {**super().describe(), "revision": model_revision("glove-50d"), "tokenizer": "glove-regex-lowercase"}


@register_learner("textcnn-glove", "TextCNN (filters 3/4/5 x 100) over frozen GloVe 50d, from scratch")
def _textcnn() -> Learner:
    return GloveLearner("textcnn-glove", "cnn")


@register_learner("bilstm-glove", "BiLSTM (128 per direction, mean pooling) over frozen GloVe 50d, from scratch")
def _bilstm() -> Learner:
    return GloveLearner("bilstm-glove", "lstm")
