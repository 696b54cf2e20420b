"""Pooling of hidden states into one vector per sequence, and per-request postprocessing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ember.errors import UnsupportedModelError
from ember.model.heads import OutputHeads

POOLING_TYPES = ("CLS", "MEAN", "MAX", "LAST")


class Pooler:
    """CLS / MEAN / MAX / LAST pooling over right-padded rows."""

    def __init__(self, pooling_type: str) -> None:
        if pooling_type not in POOLING_TYPES:
            raise UnsupportedModelError(f"pooling_type must be one of {POOLING_TYPES}, got {pooling_type!r}")
        self.pooling_type = pooling_type

    def __call__(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[batch, seq, hidden] + [batch, seq] 0/1 -> [batch, hidden] in float32."""
        hidden = hidden.float()
        if self.pooling_type == "CLS":
            return hidden[:, 0]
        if self.pooling_type == "LAST":
            last = attention_mask.sum(dim=1) - 1  # [batch]
            return hidden[torch.arange(hidden.shape[0]), last]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [batch, seq, 1]
        if self.pooling_type == "MEAN":
            return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return hidden.masked_fill(mask == 0, float("-inf")).amax(dim=1)


def postprocess(vectors: torch.Tensor, dimensions: Sequence[int | None], normalize: Sequence[bool]) -> torch.Tensor:
    """Matryoshka truncation then L2 normalization, row by row as each request asks.

    Args:
        vectors: [batch, hidden] float32 pooled vectors.
        dimensions: per row, the size to keep (None: all).
        normalize: per row, whether to L2-normalize.

    Returns:
        [batch, hidden] float32; truncated rows keep their leading values and are
        zero-padded past their size (the caller slices each row to its own size).
    """
    if all(normalize) and all(dims is None for dims in dimensions):  # the common case, in one op
        return F.normalize(vectors, p=2, dim=-1)  # a new tensor: never a view of the batch's hidden states
    out = vectors.clone()
    for i, dims in enumerate(dimensions):
        if dims is not None:
            out[i, dims:] = 0
    rows = [i for i, flag in enumerate(normalize) if flag]
    if len(rows) == len(normalize):
        out = F.normalize(out, p=2, dim=-1)
    elif rows:
        out[rows] = F.normalize(out[rows], p=2, dim=-1)
    return out


@dataclass(frozen=True, slots=True)
class RowSpec:
    """What one row of a batch asks for: its task and how its output is shaped."""

    task: str
    dimensions: int | None = None
    normalize: bool = False
    use_activation: bool = True


def activate(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """[rows, labels] logits -> scores as transformers and sentence-transformers' CrossEncoder define
    them: sigmoid for one label (a relevance score) or multi-label problems, else softmax."""
    if logits.shape[-1] == 1 or multi_label:
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=-1)


def row_outputs(hidden: torch.Tensor, attention_mask: torch.Tensor, input_ids: torch.Tensor,
                rows: Sequence[RowSpec], pooler: Pooler, heads: OutputHeads) -> list[Any]:
    """The output of every real row of a batch, in float32, whatever its task: one forward
    serves every kind of output (model/heads.py).

    Args:
        hidden: [batch, seq, hidden] last hidden states (rows past len(rows) are padding).
        attention_mask: [batch, seq] 0/1.
        input_ids: [batch, seq] token ids (the sparse heads weigh vocabulary tokens).
        rows: per real row, its task: "embed" (a pooled vector: Dense modules, matryoshka cut,
            normalized), "token_embed" ([tokens, hidden]), "classify" ([labels]), "score" (a
            scalar tensor), "sparse" ([vocab] weights), "multi_vector" ([tokens - 1, dim]) or
            "hybrid" (a dict of the dense vector, and the sparse weights and multi-vector where
            the model has their heads).
    """
    n = len(rows)
    out: list[Any] = [None] * n
    pooled = [i for i in range(n) if rows[i].task in ("embed", "hybrid")]
    if pooled:
        # Eager ops cost 5-20 us each at a query's size: a batch of only pooled rows is a view.
        picked = slice(None, n) if len(pooled) == n else pooled
        vectors = pooler(hidden[picked], attention_mask[picked])
        if heads.dense is not None:
            vectors = heads.dense(vectors)
        cut = postprocess(vectors, [rows[i].dimensions for i in pooled], [rows[i].normalize for i in pooled])
        for j, i in enumerate(pooled):
            dims = rows[i].dimensions
            out[i] = cut[j, :dims] if dims else cut[j]
    scored = [i for i in range(n) if rows[i].task in ("classify", "score")]
    if scored:
        assert heads.classifier is not None, "classify/score rows need a model with a classification head"
        picked = slice(None, n) if len(scored) == n else scored
        logits = heads.classifier(hidden[picked], attention_mask[picked]).float()
        scores = activate(logits, heads.multi_label)
        for j, i in enumerate(scored):
            value = scores[j] if rows[i].use_activation else logits[j]
            out[i] = value[0] if rows[i].task == "score" else value
    for i in range(n):
        task = rows[i].task
        if task in ("embed", "classify", "score"):
            continue
        length = int(attention_mask[i].sum())
        tokens, ids = hidden[i, :length], input_ids[i, :length]
        if task == "token_embed":
            vecs = tokens.float()
            out[i] = F.normalize(vecs, dim=-1) if rows[i].normalize else vecs
        elif task == "sparse":
            assert heads.sparse is not None, "sparse rows need a model with a sparse head"
            out[i] = heads.sparse(tokens, ids)
        elif task == "multi_vector":
            assert heads.multi_vector is not None, "multi_vector rows need a model with a multi-vector head"
            out[i] = heads.multi_vector(tokens, rows[i].normalize)
        elif task == "hybrid":
            out[i] = {"dense": out[i],
                      "sparse": heads.sparse(tokens, ids) if heads.sparse is not None else None,
                      "multi_vector": (heads.multi_vector(tokens, rows[i].normalize)
                                       if heads.multi_vector is not None else None)}
    return out


def mean_of_chunks(vectors: list[torch.Tensor], num_tokens: list[int], normalize: bool) -> torch.Tensor:
    """The vector of a text embedded in chunks: the chunks' vectors averaged with their token
    counts as weights, L2-normalized again when the model normalizes."""
    stacked = torch.stack(vectors).float()
    weights = torch.tensor(num_tokens, dtype=torch.float32)
    mean = (stacked * weights[:, None]).sum(0) / weights.sum()
    return torch.nn.functional.normalize(mean, dim=0) if normalize else mean
