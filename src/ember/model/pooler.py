"""Pooling of hidden states into one vector per sequence, and per-request postprocessing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ember.errors import UnsupportedModelError

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


def sparse_weights(logits: torch.Tensor) -> torch.Tensor:
    """SPLADE's lexical weights from masked-LM logits of one row's tokens: max over the tokens of
    log(1 + relu(logit)), [tokens, vocab] -> [vocab] (zero for most of the vocabulary)."""
    return torch.log1p(torch.relu(logits.float())).amax(dim=0)


def row_outputs(hidden: torch.Tensor, attention_mask: torch.Tensor, rows: Sequence[RowSpec], pooler: Pooler,
                head: torch.nn.Module | None = None, multi_label: bool = False,
                dense: torch.nn.Module | None = None, sparse_head: torch.nn.Module | None = None
                ) -> list[torch.Tensor]:
    """The output of every real row of a batch, in float32, whatever its task.

    Args:
        hidden: [batch, seq, hidden] last hidden states (rows past len(rows) are padding).
        attention_mask: [batch, seq] 0/1.
        rows: per real row, its task: "embed" (a pooled vector: matryoshka cut, normalized),
            "token_embed" ([tokens, hidden]), "classify" ([labels]) or "score" (a scalar tensor).
        head: the classification head (logits from hidden states), for classify and score.
        multi_label: the head's labels are independent (sigmoid per label).
        dense: sentence-transformers Dense modules, run on pooled vectors before the cut and
            normalization (model/dense.py).
        sparse_head: the masked-LM head, for "sparse" rows ([vocab] lexical weights, SPLADE).
    """
    n = len(rows)
    out: list[torch.Tensor] = [None] * n  # type: ignore[list-item]
    embed = [i for i in range(n) if rows[i].task == "embed"]
    if embed:
        vectors = pooler(hidden[embed], attention_mask[embed])
        if dense is not None:
            vectors = dense(vectors)
        pooled = postprocess(vectors, [rows[i].dimensions for i in embed], [rows[i].normalize for i in embed])
        for j, i in enumerate(embed):
            dims = rows[i].dimensions
            out[i] = pooled[j, :dims] if dims else pooled[j]
    scored = [i for i in range(n) if rows[i].task in ("classify", "score")]
    if scored:
        assert head is not None, "classify/score rows need a model with a classification head"
        logits = head(hidden[scored]).float()
        scores = activate(logits, multi_label)
        for j, i in enumerate(scored):
            value = scores[j] if rows[i].use_activation else logits[j]
            out[i] = value[0] if rows[i].task == "score" else value
    for i in range(n):
        if rows[i].task == "sparse":
            assert sparse_head is not None, "sparse rows need a model with a masked-LM head"
            tokens = hidden[i, : int(attention_mask[i].sum())]
            out[i] = sparse_weights(sparse_head(tokens.to(sparse_head.decoder.weight.dtype)))
        if rows[i].task == "token_embed":
            vecs = hidden[i, : int(attention_mask[i].sum())].float()
            out[i] = F.normalize(vecs, dim=-1) if rows[i].normalize else vecs
    return out


def mean_of_chunks(vectors: list[torch.Tensor], num_tokens: list[int], normalize: bool) -> torch.Tensor:
    """The vector of a text embedded in chunks: the chunks' vectors averaged with their token
    counts as weights, L2-normalized again when the model normalizes."""
    stacked = torch.stack(vectors).float()
    weights = torch.tensor(num_tokens, dtype=torch.float32)
    mean = (stacked * weights[:, None]).sum(0) / weights.sum()
    return torch.nn.functional.normalize(mean, dim=0) if normalize else mean
