"""MPNet (all-mpnet-base-v2): BERT's post-LayerNorm layer plus a relative position bias in every
layer's attention scores (T5-style buckets, one table shared by all layers). Positions count from
padding_idx + 1 = 2, as RoBERTa's; there are no segment embeddings.

The bias is folded into the attention mask once per batch (embed()), so each layer still takes
(hidden, mask) and the layers compile as one graph like BERT's."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ember.model.bert import _LAYER_NAMES, BertModel, EncoderConfig, _strip_prefixes

MPNET_PADDING_IDX = 1
"""transformers' MPNetEmbeddings fixes padding_idx at 1 whatever config.json says."""


@dataclass(frozen=True, slots=True)
class MPNetConfig(EncoderConfig):
    relative_attention_num_buckets: int = 32


def relative_position_bucket(relative_position: torch.Tensor, num_buckets: int = 32,
                             max_distance: int = 128) -> torch.Tensor:
    """transformers' MPNet bucketing of key - query distances: half the buckets per direction,
    exact up to a quarter of them, then logarithmic up to max_distance."""
    n = -relative_position
    num_buckets //= 2
    ret = (n < 0).to(torch.long) * num_buckets
    n = torch.abs(n)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    val_if_large = max_exact + (
        torch.log(n.float() / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).to(torch.long)
    val_if_large = torch.clamp(val_if_large, max=num_buckets - 1)
    return ret + torch.where(is_small, n, val_if_large)


class MPNetModel(BertModel):
    checkpoint_prefixes = ("mpnet.",)

    def __init__(self, cfg: MPNetConfig) -> None:
        super().__init__(cfg)
        self.relative_attention_bias = nn.Embedding(cfg.relative_attention_num_buckets, cfg.num_attention_heads)

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any]) -> MPNetConfig:
        base = EncoderConfig.from_hf({**hf, "type_vocab_size": 0}, position_offset=MPNET_PADDING_IDX + 1)
        return MPNetConfig(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)},
                           relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32))

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The embedded tokens and a [batch, heads, seq, seq] additive mask: the position bias,
        with padded keys at the dtype's minimum."""
        x = self.embeddings(input_ids, None)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        buckets = relative_position_bucket(positions[None, :] - positions[:, None],
                                           self.config.relative_attention_num_buckets)
        bias = self.relative_attention_bias(buckets).permute(2, 0, 1)[None].to(x.dtype)  # [1, heads, seq, seq]
        keep = attention_mask.bool()[:, None, None, :]
        return x, bias.masked_fill(~keep, torch.finfo(x.dtype).min)

    def convert_checkpoint(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        weights = _strip_prefixes(weights, self.checkpoint_prefixes)
        out = {k: v for k, v in weights.items() if k.startswith("embeddings.") and not k.endswith("position_ids")}
        out["relative_attention_bias.weight"] = weights["encoder.relative_attention_bias.weight"]
        for i in range(self.config.num_hidden_layers):
            src, dst = f"encoder.layer.{i}.", f"layers.{i}."
            for kind in ("weight", "bias"):
                out[dst + f"qkv.{kind}"] = torch.cat([weights[src + f"attention.attn.{p}.{kind}"] for p in "qkv"])
                out[dst + f"attn_out.{kind}"] = weights[src + f"attention.attn.o.{kind}"]
                out[dst + f"attn_norm.{kind}"] = weights[src + f"attention.LayerNorm.{kind}"]
                for theirs, ours in _LAYER_NAMES.items():
                    if not theirs.startswith("attention."):
                        out[dst + f"{ours}.{kind}"] = weights[src + f"{theirs}.{kind}"]
        return out
