"""Bidirectional attention over right-padded batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ember.kernels import attention as attention_kernel


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[batch, seq] 0/1 mask -> [batch, 1, 1, seq] bool mask for SDPA (True = attend)."""
    return attention_mask.bool()[:, None, None, :]


def encoder_attention(
    qkv: torch.Tensor | attention_kernel.QkvAccumulator, num_heads: int, attn_mask: torch.Tensor, narrow: bool = False
) -> torch.Tensor:
    """Self-attention from a fused projection.

    Args:
        qkv: [batch, seq, 3 * hidden] output of the fused q/k/v linear, or an int8 linear's
            accumulator of it (runner/int8/linear.py), which the kernel dequantizes as it reads.
        num_heads: attention heads.
        attn_mask: [batch, 1, 1, seq] bool key mask.
        narrow: q.k and P.V as bf16 or int16 dot products where the kernel has them (the int8
            model's choice, which its gate measures); float32 elsewhere.

    Returns:
        [batch, seq, hidden] attention output before the output projection.

    Runs in Ember's attention kernel (ember/kernels/attention.py) when the process has it and
    it takes this head size and dtype; else in torch's SDPA.
    """
    accumulated = qkv if isinstance(qkv, attention_kernel.QkvAccumulator) else None
    batch, seq, three_hidden = qkv.acc.shape if accumulated is not None else qkv.shape
    head_dim = three_hidden // (3 * num_heads)
    key_mask_only = attn_mask.dtype == torch.bool and attn_mask.dim() == 4 and tuple(attn_mask.shape[1:3]) == (1, 1)
    float_rows = accumulated is not None or qkv.dtype == torch.float32
    if attention_kernel.supports(head_dim, torch.float32) and key_mask_only and float_rows:
        key_mask = attn_mask[:, 0, 0, :]
        narrow = narrow and attention_kernel.supports(head_dim, torch.float32, narrow=True)
        if accumulated is not None:
            op = torch.ops.ember.encoder_attention_int8_narrow if narrow else torch.ops.ember.encoder_attention_int8
            return op(*accumulated, key_mask, num_heads)
        op = torch.ops.ember.encoder_attention_narrow if narrow else torch.ops.ember.encoder_attention
        return op(qkv, key_mask, num_heads)
    if accumulated is not None:
        qkv = accumulated.dequantize()
    # [3, batch, heads, seq, head_dim]
    q, k, v = qkv.view(batch, seq, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return out.transpose(1, 2).reshape(batch, seq, num_heads * head_dim)
