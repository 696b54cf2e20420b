"""A padded batch of token-id rows, snapped to a shape the engine has warmed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True, slots=True)
class Batch:
    """Right-padded rows. Rows past `num_seqs` are padding rows (one token, ignored)."""

    input_ids: torch.Tensor  # [batch, seq] int64
    attention_mask: torch.Tensor  # [batch, seq] int64, 1 on real tokens
    num_seqs: int
    num_tokens: int
    """Real (unpadded) tokens in the batch."""
    token_type_ids: torch.Tensor | None = None
    """[batch, seq] int64 segment ids, when some row is a text pair; None: all zeros."""

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)  # type: ignore[return-value]

    @classmethod
    def from_token_ids(cls, rows: Sequence[Sequence[int]], shape: tuple[int, int], pad_id: int,
                       token_types: Sequence[Sequence[int] | None] | None = None) -> Batch:
        """Pad `rows` into a [shape] batch. Extra rows hold a single pad token. `token_types`: per
        row its segment ids, or None (zeros)."""
        batch_size, seq_len = shape
        assert len(rows) <= batch_size and max(map(len, rows)) <= seq_len, (len(rows), shape)
        ids = np.full((batch_size, seq_len), pad_id, dtype=np.int64)
        mask = np.zeros((batch_size, seq_len), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        mask[len(rows):, 0] = 1  # padding rows attend to one token so softmax stays finite
        types = None
        if token_types is not None and any(t is not None for t in token_types):
            types = np.zeros((batch_size, seq_len), dtype=np.int64)
            for i, row_types in enumerate(token_types):
                if row_types is not None:
                    types[i, : len(row_types)] = row_types
        return cls(torch.from_numpy(ids), torch.from_numpy(mask), len(rows), sum(map(len, rows)),
                   None if types is None else torch.from_numpy(types))
