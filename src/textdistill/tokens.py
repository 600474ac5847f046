"""Tokens: how many a learner reads of texts and of a whole set. A budget in examples rewards long examples, so
`show`, the bench report and the audit give a set's tokens beside its examples, and the ``pack`` coreset fills
its examples up to the learner's max length with them."""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from .data import Task
    from .distilled import DistilledDataset
    from .learners import Learner

DEFAULT_LEARNER = "minilm"  # whose tokens a set counts when it is bound to no learner
UNCUT = 10**9  # a max length no text reaches: the whole text's tokens
BATCH = 256  # texts encoded at once (long documents padded together would fill the memory)


def token_reader(learner: "Learner") -> "Learner":
    """The learner that turns texts into the tokens ``learner`` reads, at its max length: itself when it reads
    tokens (a transformer's subwords, GloVe's regex words), else the encoder whose tokens it reads (a probe on
    frozen sentence vectors, SetFit's body)."""
    from .errors import ConfigError
    from .learners import Learner

    if learner.input_kind == "tokens" or learner.reads_tokens:
        return learner
    encoder = getattr(learner, "encoder", None)
    if isinstance(encoder, Learner) and encoder.input_kind == "tokens":
        return encoder.with_max_length(learner.max_length)
    raise ConfigError(f"learner {learner.name!r} ({type(learner).__name__}) reads no tokens of its own and names no "
                      "encoder that does: its tokens cannot be counted")


def token_counts(learner: "Learner", texts: list[str], pairs: list[str] | None = None,
                 cut: bool = True) -> "np.ndarray":
    """Per text (or pair): the tokens ``learner`` reads, special tokens included; ``cut=False``: the whole text's,
    beyond the learner's max length."""
    import numpy as np

    reader = token_reader(learner)
    reader = reader if cut else reader.with_max_length(UNCUT)
    out = []
    for start in range(0, len(texts), BATCH):
        chunk = None if pairs is None else pairs[start : start + BATCH]
        out.append(reader.encode(texts[start : start + BATCH], chunk)["attention_mask"].sum(1).numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def count_learner(ds: "DistilledDataset") -> str:
    """Whose tokens a set counts by default: the learner it is bound to (whose recipe it carries), else minilm."""
    return ds.bound_learner() if ds.bound_to else DEFAULT_LEARNER


def set_tokens(ds: "DistilledDataset", learner: "str | Learner | None" = None,
               task: "Task | None" = None) -> int | None:
    """The tokens a learner reads in the whole set: a text set's texts as ``learner`` (default ``count_learner``)
    reads them at ``task``'s max length (default: the one the set records), a token-embedding set's positions
    (those its attention mask keeps); None for a set of sentence vectors or a generator, which hold no tokens."""
    from .errors import ArtifactError
    from .learners import get_learner

    if ds.kind == "token-embeddings":
        mask = ds.tensors.get("attention_mask")
        if mask is None:
            raise ArtifactError(f"{ds.path or 'this token-embeddings set'}: no examples.attention_mask to count its "
                                "positions by")
        return int((mask != 0).sum())
    if ds.kind != "text":
        return None
    learner = learner or count_learner(ds)
    learner = get_learner(learner) if isinstance(learner, str) else learner
    if task is None:
        max_length = (ds.task.get("spec") or {}).get("max_length")
        if max_length is not None:
            if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
                where = f"{ds.path}/manifest.json" if ds.path is not None else "the set"
                raise ArtifactError(f"{where}: task.spec.max_length must be a positive integer, got {max_length!r}")
            task = SimpleNamespace(spec=SimpleNamespace(max_length=max_length))  # all that for_task reads
    if task is not None:
        learner = learner.for_task(task)
    if not len(ds):
        return 0
    return int(token_counts(learner, ds.texts, ds.text_pairs).sum())
