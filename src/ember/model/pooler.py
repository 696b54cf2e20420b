"""Pooling of hidden states into one vector per sequence, and per-request postprocessing."""

from __future__ import annotations

from collections.abc import Sequence

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
