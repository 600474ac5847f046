"""The base of every learner (a model family with a functional forward) and the registry of learners."""

from __future__ import annotations

import copy
import fnmatch
import math
from abc import ABC, abstractmethod
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, ContextManager

import numpy as np
import torch

from ..cache import cached_array, key_of
from ..errors import ConfigError
from ..recipe import Recipe
from ..params import Params


class Learner(ABC):
    """A model family. ``forward`` takes one of three input kinds: ``input_ids`` (+ ``attention_mask``),
    ``inputs_embeds`` (+ ``attention_mask``) or ``features`` (sentence vectors)."""

    name: str
    input_kind: str = "tokens"  # tokens | features
    max_length: int = 64
    task_kinds: tuple[str, ...] = ("classification",)  # the kinds of task (TaskSpec.kind) it is judged on
    # a learner of another input kind whose ``encode`` still gives the tokens it reads (a causal LM reads text)
    reads_tokens: bool = False

    @property
    @abstractmethod
    def default_recipe(self) -> Recipe: ...

    # The learner's standard recipe for a whole training split (epochs, not a few hundred steps of a small set):
    # full-data accuracy is what a distilled set is a fraction of, so it must not be cut short.
    full_data: dict = {"epochs": 3, "batch_size": 32, "lr": 5e-5, "warmup": 0.1, "schedule": "linear"}

    def full_data_recipe(self, n: int) -> Recipe:
        """``full_data`` over ``n`` training examples, as a Recipe (its steps are the epochs' steps)."""
        values = {**self.default_recipe.to_dict(), **self.full_data}
        epochs = values.pop("epochs")
        values["steps"] = max(1, math.ceil(epochs * n / min(values["batch_size"], n)))
        return Recipe.from_dict(values)

    @abstractmethod
    def build(self, num_labels: int, seed: int) -> torch.nn.Module:
        """A fresh model: pretrained weights with a new seeded head, or a seeded random init."""

    @abstractmethod
    def encode(self, texts: list[str], pairs: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Model inputs for texts (padded to the longest, at most ``max_length``)."""

    @abstractmethod
    def forward(self, model: torch.nn.Module, params: Params, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of ``model`` evaluated with ``params`` (``torch.func.functional_call``)."""

    def first_order(self, model: torch.nn.Module) -> ContextManager:
        """A context for forwards that are differentiated at most once, where a learner may use kernels
        without a double backward (``train`` and ``predict`` enter it when they can)."""
        return nullcontext()

    def head(self, model: torch.nn.Module) -> torch.nn.Module:
        """The classifier head: what it reads is the learner's representation (``embed``)."""
        return model.head

    def head_parameter_names(self, model: torch.nn.Module) -> list[str]:
        own = {id(p) for p in self.head(model).parameters()}
        return [k for k, p in model.named_parameters() if id(p) in own]

    def embed(self, model: torch.nn.Module, params: Params, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The representation the head reads [n, d], through the same functional forward as the logits."""
        seen: list[torch.Tensor] = []
        hook = self.head(model).register_forward_pre_hook(lambda _, args: seen.append(args[0]))
        try:
            self.forward(model, params, inputs)
        finally:
            hook.remove()
        return seen[0][:, 0] if seen[0].dim() == 3 else seen[0]  # heads that read every position: the first

    @abstractmethod
    def _sentence_vectors(self, texts: list[str], pairs: list[str] | None) -> np.ndarray: ...

    def sentence_vectors(self, texts: list[str], pairs: list[str] | None = None, cache: bool = True) -> np.ndarray:
        """The learner's embedding space for texts (coresets, nearest examples), cached on disk unless the texts
        are throwaway (``cache=False``: candidates a method proposes and discards)."""
        texts, pairs = list(texts), None if pairs is None else list(pairs)
        if not cache:
            return self._sentence_vectors(texts, pairs)
        key = key_of(self.embedding_id, self.max_length, texts, pairs)
        return cached_array("vectors", key, lambda: self._sentence_vectors(texts, pairs))

    @property
    def embedding_id(self) -> str:
        return self.name

    def input_width(self) -> int | None:
        """The width of the vectors a model-bound set feeds this learner (token embeddings or sentence vectors);
        None where it has none to check."""
        return None

    def with_max_length(self, max_length: int) -> "Learner":
        """This learner cutting texts at ``max_length`` tokens: a shallow copy that shares the loaded models."""
        if max_length == self.max_length:
            return self
        if not isinstance(max_length, int) or max_length < 1:
            raise ConfigError(f"learner {self.name!r}: max_length must be a positive integer, not {max_length!r}")
        out = copy.copy(self)
        out.max_length = max_length
        return out

    def for_task(self, task) -> "Learner":
        """This learner as the task's spec asks (its ``max_length``: 64 for short reviews, 128 for news, ...)."""
        return self.with_max_length(task.spec.max_length)

    def describe(self) -> dict:
        """What a model-bound artifact records about its learner."""
        return {"id": self.name, "max_length": self.max_length, "input_kind": self.input_kind}


class TokenLearner(Learner):
    """A learner that reads token embeddings: what the token-space methods (bptt, dc, dm, mtt on tokens, gradmm)
    and decoding need. Its contract: ``input_embeddings``, ``vocabulary`` and ``forward`` on ``inputs_embeds``."""

    input_kind = "tokens"

    @abstractmethod
    def input_embeddings(self, model: torch.nn.Module, params: Params, input_ids: torch.Tensor) -> torch.Tensor:
        """The embeddings ``forward`` reads for ``input_ids`` (through ``params``: differentiable)."""

    @abstractmethod
    def vocabulary(self) -> tuple[list[str], torch.Tensor]:
        """Tokens and their input embeddings."""

    pair_separator = "[SEP]"  # the token between the two texts of a pair, where decoding splits them

    def detokenize(self, tokens: list[str]) -> str:
        """Text from vocabulary tokens (special tokens dropped)."""
        return " ".join(t for t in tokens if not (t.startswith("[") and t.endswith("]")))

    def input_width(self) -> int | None:
        return int(self.vocabulary()[1].shape[1])

    def nearest_tokens(self, embeds: torch.Tensor, mask: torch.Tensor) -> list[list[str]]:
        """The vocabulary token nearest (cosine) to each position of a token-embedding set."""
        tokens, table = self.vocabulary()
        table = torch.nn.functional.normalize(table.float(), dim=-1)
        out = []
        for row, m in zip(embeds.float(), mask.bool()):
            ids = (torch.nn.functional.normalize(row[m], dim=-1) @ table.T).argmax(-1)
            out.append([tokens[i] for i in ids.tolist()])
        return out


class AttentionLearner(TokenLearner):
    """A token learner whose ``forward(..., attentions=True)`` also returns its attention probabilities per layer
    (transformers): what attention labels need."""

    @abstractmethod
    def forward(self, model: torch.nn.Module, params: Params, inputs: dict[str, torch.Tensor],
                attentions: bool = False): ...


class FeatureLearner(Learner):
    """A learner on fixed sentence vectors (``features``): the space of vector sets (dm, mtt, dc on features)
    and of embed-invert."""

    input_kind = "features"


@dataclass
class Fitted:
    """A model a ``FitLearner`` trained: ``logits(texts, pairs)`` gives class scores [n, C] (log-probabilities for
    SetFit); ``log`` what training measured (recorded with the evaluation run)."""

    logits: Callable[[list[str], "list[str] | None"], torch.Tensor]
    log: dict = field(default_factory=dict)

    def predict(self, texts: list[str], pairs: list[str] | None = None) -> torch.Tensor:
        """Class ids [n]."""
        return self.logits(texts, pairs).argmax(-1)


class FitLearner(Learner):
    """A learner with its own training procedure instead of the shared loop (SetFit: a body fine-tuned on sentence
    pairs, then a logistic-regression head). Evaluation calls ``fit`` on a text set and records ``settings`` as the
    recipe. It has no functional forward: what trains learners through the loop (teachers, the learned methods,
    learned labels, audits' attacks) refuses it, naming it."""

    input_kind = "text"
    full_data: dict = {}  # settings that replace the small-set ones on a whole training split

    @abstractmethod
    def settings(self, overrides: dict | None = None, full_data: bool = False) -> dict:
        """The training settings (JSON-able), the full-data ones with ``full_data``, with evaluation's recipe
        overrides (``steps``, ``lr``, ``batch_size``, ``precision``; None values ignored) mapped onto them."""

    @abstractmethod
    def fit(self, texts: list[str], pairs: list[str] | None, labels: torch.Tensor, num_labels: int, settings: dict,
            seed: int, device: str = "cpu", progress: bool = False) -> Fitted:
        """A model trained on the texts (labels: class ids [n] or class distributions [n, C]) from ``seed``."""

    def overridden(self, values: dict, overrides: dict | None, names: dict[str, str]) -> dict:
        """``values`` with evaluation's recipe overrides set on the settings ``names`` maps them to (a recipe key
        such as ``lr`` to a setting such as ``body_lr``); None values and float32 precision are ignored, any other
        key is refused, naming the learner and what it takes."""
        for key, value in (overrides or {}).items():
            if value is None or (key == "precision" and value == "float32"):
                continue
            if key not in names:
                taken = ", ".join(f"{k} ({v})" if v != k else k for k, v in names.items())
                raise ConfigError(f"learner {self.name!r} takes {taken} from a recipe, not {key}={value!r}")
            values[names[key]] = value
        return values

    def _refused(self, what: str) -> ConfigError:
        return ConfigError(f"learner {self.name!r} trains with its own fit ({type(self).__name__}), not through the "
                           f"shared training loop, so it has no {what}: it evaluates text sets (evaluate, bench); "
                           "teachers, learned methods, learned labels and audits need a loop learner such as "
                           "'minilm' or 'minilm-frozen'")

    @property
    def default_recipe(self) -> Recipe:
        raise self._refused("loop recipe")

    def build(self, num_labels: int, seed: int) -> torch.nn.Module:
        raise self._refused("model to build")

    def encode(self, texts: list[str], pairs: list[str] | None = None) -> dict[str, torch.Tensor]:
        raise self._refused("model inputs")

    def forward(self, model: torch.nn.Module, params: Params, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        raise self._refused("functional forward")


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1: cosine similarity becomes a dot product."""
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(1e-12)


LEARNERS: dict[str, Callable[[], Learner]] = {}
DESCRIPTIONS: dict[str, str] = {}


def register_learner(name: str, description: str) -> Callable:
    def wrap(factory: Callable[[], Learner]) -> Callable[[], Learner]:
        LEARNERS[name] = factory
        DESCRIPTIONS[name] = description
        return factory

    return wrap


def list_learners(pattern: str = "*") -> list[str]:
    return [n for n in LEARNERS if fnmatch.fnmatch(n, pattern)]
