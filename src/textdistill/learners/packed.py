"""BERT-family sequence classification on real tokens only: the same maths, without the padding's matrix products.

A batch is padded to its longest text, and on short-text tasks padding is a third to a half of every token row
(MR: 20 sentences, longest 49 tokens, mean 31). Rows are independent everywhere except in attention, and there
padded keys carry exactly zero weight, so the linear layers, GELU and LayerNorm can run on the real tokens
alone; attention runs on the padded layout, as before. Dropout masks are drawn on the padded shape, in the
same order as Hugging Face's forward, and then gathered, so a seeded run draws the very same masks. What can
differ is float rounding: a weight gradient sums over fewer rows, so its blocks add up in another order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def packable(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> bool:
    """A BERT-like classifier (embeddings, encoder layers, [CLS] pooler) under a right-padded batch."""
    mask = inputs.get("attention_mask")
    return (getattr(model.config, "model_type", None) == "bert" and not model.config.is_decoder
            and hasattr(model, "bert") and model.bert.pooler is not None and mask is not None
            and bool((mask == 0).any()) and bool((mask[:, 0] == 1).all()))


def _dropout(x: torch.Tensor, keep: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout`` of the padded tensor that ``x`` holds the real rows of, for those rows: the mask is drawn on
    the padded shape (CPU dropout is ``empty_like(input).bernoulli_(1 - p).div_(1 - p)``, times the input)."""
    if not training or p == 0:
        return x
    noise = x.new_empty((*keep.shape, x.shape[-1])).bernoulli_(1 - p)
    noise.div_(1 - p)
    return x * noise[keep]


class PackedBert(torch.nn.Module):
    """Wraps a ``BertForSequenceClassification`` (its parameters are ``model.*``) with the packed forward."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None):
        bert, training = self.model.bert, self.model.training
        # Embeddings on the padded layout (cheap), so that their dropout draws what Hugging Face's does.
        hidden = bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, inputs_embeds=inputs_embeds)
        keep = attention_mask.bool()
        # Every query attends to the real keys of its row: the bidirectional mask Hugging Face builds for SDPA,
        # built here from public torch so that no private transformers helper is needed.
        mask4d = keep[:, None, None, :]
        shape = (*keep.shape, -1)
        h = hidden[keep]  # [real tokens, hidden]

        def heads(x: torch.Tensor, size: int) -> torch.Tensor:
            padded = x.new_zeros((*keep.shape, x.shape[-1]))
            padded[keep] = x
            return padded.view(*keep.shape, -1, size).transpose(1, 2)

        for layer in bert.encoder.layer:
            att, out = layer.attention.self, layer.attention.output
            q, k, v = (heads(lin(h), att.attention_head_size) for lin in (att.query, att.key, att.value))
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask4d,
                                                     dropout_p=att.dropout.p if training else 0.0, scale=att.scaling)
            context = context.transpose(1, 2).reshape(shape)[keep]
            h = out.LayerNorm(_dropout(out.dense(context), keep, out.dropout.p, training) + h)
            ffn = layer.output
            h = ffn.LayerNorm(_dropout(ffn.dense(layer.intermediate(h)), keep, ffn.dropout.p, training) + h)
        # The pooler reads each row's first token, which is real: row i starts at the i-th cumulative length.
        lengths = keep.sum(1)
        starts = torch.cumsum(lengths, 0) - lengths
        pooled = bert.pooler.activation(bert.pooler.dense(h[starts]))
        return self.model.classifier(self.model.dropout(pooled))
