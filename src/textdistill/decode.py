"""From embeddings to text: the nearest vocabulary token per position (the discretisation baseline)."""

from __future__ import annotations

from dataclasses import replace

from .errors import ArtifactError
from .learners import TokenLearner, get_learner
from .distilled import DistilledDataset


def decode_to_text(ds: DistilledDataset) -> DistilledDataset:
    """A text set from a token-embedding set: each position becomes its nearest token (cosine), so any learner
    can train on it; a pair set (pair task, or token types with a second sentence) decodes to text and text_pair.
    Labels are kept (soft ones too), and example weights; the learned step sizes and the attention labels belong to
    the bound learner and are dropped, so the text set trains with each learner's default recipe."""
    if ds.kind != "token-embeddings":
        raise ArtifactError(f"only a token-embedding set decodes to text (this one is {ds.kind!r})")
    learner = get_learner(ds.bound_learner())
    if not isinstance(learner, TokenLearner):
        raise ArtifactError(f"the set is bound to {learner.name!r}, which has no vocabulary to decode into")
    ds.check_inputs(learner)
    mask = ds.tensors["attention_mask"].bool()
    tokens = learner.nearest_tokens(ds.tensors["inputs_embeds"], mask)
    types = ds.tensors.get("token_type_ids")
    spec = ds.task.get("spec") if isinstance(ds.task, dict) else None
    pair = (isinstance(spec, dict) and spec.get("pair") is True) or (types is not None and bool((types == 1).any()))
    kinds = None if types is None else [t[m].tolist() for t, m in zip(types, mask)]
    texts, pairs = texts_of_tokens(learner, tokens, kinds, pair)
    return DistilledDataset(kind="text", labels=ds.labels, label_names=ds.label_names, texts=texts, text_pairs=pairs,
                            method=f"{ds.method}+decode", config={**ds.config, "decoded_from": ds.bound_to},
                            seed=ds.seed, task=ds.task, log=ds.log, made_with=ds.made_with or ds.bound_to,
                            # weights belong to the examples; attention labels, to the bound learner's positions
                            per_example={k: v for k, v in ds.per_example.items() if k == "weights"},
                            provenance=replace(ds.provenance))


def texts_of_tokens(learner: TokenLearner, tokens: list[list[str]], types: list[list[int]] | None,
                    pair: bool) -> tuple[list[str], list[str] | None]:
    """Texts (and, for a pair set, second texts) from each example's tokens at its counted positions, as the
    learner writes them (its special tokens dropped). ``types``: the token types at those positions, the boundary
    a learner with token types reads; without them a pair splits at its first separator (GloVe joins a pair with
    one), so the two texts, joined again by ``encode``, give the same tokens."""
    if not pair:
        firsts, seconds = tokens, None
    elif types is not None:  # the boundary the learner reads: token types are fixed, the [SEP] embedding is learned
        firsts = [[tok for tok, k in zip(row, ks) if k == 0] for row, ks in zip(tokens, types)]
        seconds = [[tok for tok, k in zip(row, ks) if k != 0] for row, ks in zip(tokens, types)]
    else:  # learners without token types (GloVe joins a pair with a separator): split at the first one
        cut = [row.index(learner.pair_separator) if learner.pair_separator in row else len(row) for row in tokens]
        firsts = [row[:c] for row, c in zip(tokens, cut)]
        seconds = [row[c + 1 :] for row, c in zip(tokens, cut)]
    texts = [learner.detokenize(t) or "[empty]" for t in firsts]
    return texts, None if seconds is None else [learner.detokenize(t) or "[empty]" for t in seconds]
