"""Token sampling from last-token logits: greedy, temperature, top-k, top-p.

Rows are sampled one by one, each with its own generator when the request has a seed, so that a
seeded request draws the same numbers whatever else is in the batch. Rows without a seed draw
from torch's default generator (the one reset after warm-up), in batch order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ember.params import SamplingParams


def sample(logits: torch.Tensor, params: Sequence[SamplingParams],
           generators: Sequence[torch.Generator | None]) -> list[int]:
    """logits [n, vocab] float32 -> one token id per row."""
    out = []
    for row, p, gen in zip(logits, params, generators):
        if p.is_greedy:
            out.append(int(row.argmax()))
            continue
        probs = torch.softmax(filter_logits(row / p.temperature, p.top_k, p.top_p), dim=-1)
        out.append(int(torch.multinomial(probs, 1, generator=gen)))
    return out


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and the top-p nucleus. logits [vocab]."""
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
        drop = cumulative - torch.softmax(ordered, dim=-1) >= top_p  # mass before this token already >= top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return logits
