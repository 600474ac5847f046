"""From embeddings to text: the nearest vocabulary token per position (the discretisation baseline)."""

from __future__ import annotations

from .errors import ArtifactError
from .learners import get_learner
from .synthetic import DistilledDataset


def decode_to_text(ds: DistilledDataset) -> DistilledDataset:
    """A text set from a token-embedding set: each position becomes its nearest token (cosine), so any learner
    can train on it. Labels are kept (soft ones too); the learned step sizes belong to the bound learner and
    are dropped, so the text set trains with each learner's default recipe."""
    if ds.kind != "token-embeddings":
        raise ArtifactError(f"only a token-embedding set decodes to text (this one is {ds.kind!r})")
    learner = get_learner(ds.bound_learner())
    tokens = learner.nearest_tokens(ds.tensors["inputs_embeds"], ds.tensors["attention_mask"])
    texts = [learner.detokenize(t) or "[empty]" for t in tokens]
    return DistilledDataset(kind="text", labels=ds.labels, label_names=ds.label_names, texts=texts,
                            method=f"{ds.method}+decode", config={**ds.config, "decoded_from": ds.learner},
                            seed=ds.seed, task=ds.task, log=ds.log)
