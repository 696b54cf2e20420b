"""Bidirectional attention over right-padded batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[batch, seq] 0/1 mask -> [batch, 1, 1, seq] bool mask for SDPA (True = attend)."""
    return attention_mask.bool()[:, None, None, :]


def encoder_attention(
    qkv: torch.Tensor, num_heads: int, attn_mask: torch.Tensor
) -> torch.Tensor:
    """Self-attention from a fused projection.

    Args:
        qkv: [batch, seq, 3 * hidden] output of the fused q/k/v linear.
        num_heads: attention heads.
        attn_mask: [batch, 1, 1, seq] bool key mask.

    Returns:
        [batch, seq, hidden] attention output before the output projection.
    """
    batch, seq, three_hidden = qkv.shape
    head_dim = three_hidden // (3 * num_heads)
    # [3, batch, heads, seq, head_dim]
    q, k, v = qkv.view(batch, seq, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return out.transpose(1, 2).reshape(batch, seq, num_heads * head_dim)
