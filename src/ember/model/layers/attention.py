"""Bidirectional attention over right-padded batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ember.kernels import attention as attention_kernel


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[batch, seq] 0/1 mask -> [batch, 1, 1, seq] bool mask for SDPA (True = attend)."""
    return attention_mask.bool()[:, None, None, :]


def encoder_attention(
    qkv: torch.Tensor, num_heads: int, attn_mask: torch.Tensor, bf16: bool = False
) -> torch.Tensor:
    """Self-attention from a fused projection.

    Args:
        qkv: [batch, seq, 3 * hidden] output of the fused q/k/v linear.
        num_heads: attention heads.
        attn_mask: [batch, 1, 1, seq] bool key mask.
        bf16: q.k and P.V as bf16 dot products where the kernel has them (the int8 model's
            choice, which its gate measures); float32 elsewhere.

    Returns:
        [batch, seq, hidden] attention output before the output projection.

    Runs in Ember's attention kernel (ember/kernels/attention.py) when the process has it and
    it takes this head size and dtype; else in torch's SDPA.
    """
    batch, seq, three_hidden = qkv.shape
    head_dim = three_hidden // (3 * num_heads)
    if attention_kernel.supports(head_dim, qkv.dtype) and attn_mask.dtype == torch.bool and attn_mask.dim() == 4 \
            and attn_mask.shape[1] == 1 and attn_mask.shape[2] == 1:
        if bf16 and attention_kernel.supports(head_dim, qkv.dtype, bf16=True):
            return torch.ops.ember.encoder_attention_bf16(qkv, attn_mask[:, 0, 0, :], num_heads)
        return torch.ops.ember.encoder_attention(qkv, attn_mask[:, 0, 0, :], num_heads)
    # [3, batch, heads, seq, head_dim]
    q, k, v = qkv.view(batch, seq, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return out.transpose(1, 2).reshape(batch, seq, num_heads * head_dim)
