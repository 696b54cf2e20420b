"""Llama-family decoders (Llama, Qwen2, Qwen3) in plain torch: RMSNorm, RoPE, GQA, SwiGLU.

Three entry points share the layers:
- forward(input_ids, attention_mask): right-padded [batch, seq] -> final hidden states, for
  LAST-token embedders served by the encoder runner;
- prefill(input_ids, last_index): a fresh prompt batch -> last-token logits, hidden states and
  the keys/values to store in the cache;
- decode(input_ids, positions, kv_cache, block_tables): one new token per row, attending to the
  paged cache plus itself -> logits and the new keys/values.
The graphs are pure: the runner writes keys/values into the cache between calls, so compiled
graphs never mutate their inputs. q/k/v and gate/up are fused into one linear each on load.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ember.errors import UnsupportedModelError
from ember.model.layers.norm import RMSNorm
from ember.model.layers.rotary import rope_inv_freq, rope_parameters, rotate

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True, slots=True)
class DecoderConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    max_position_embeddings: int
    rope: dict[str, Any]
    """rope_parameters (transformers 5) or rope_theta + rope_scaling (4.x), merged."""
    attention_bias: bool
    mlp_bias: bool
    qk_norm: bool
    tie_word_embeddings: bool
    pad_token_id: int
    eos_token_ids: tuple[int, ...]

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> DecoderConfig:
        if hf.get("hidden_act", "silu") != "silu":
            raise UnsupportedModelError(f"hidden_act={hf.get('hidden_act')!r} is not supported (only 'silu')")
        if hf.get("use_sliding_window"):
            raise UnsupportedModelError("sliding-window attention (use_sliding_window=true) is not supported")
        model_type = hf.get("model_type", "llama")
        heads = hf["num_attention_heads"]
        eos = hf.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        pad = hf.get("pad_token_id")
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            intermediate_size=hf["intermediate_size"],
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            rope=rope_parameters(hf),
            attention_bias=bool(hf.get("attention_bias", model_type == "qwen2")),
            mlp_bias=bool(hf.get("mlp_bias", False)),
            qk_norm=model_type == "qwen3",
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            pad_token_id=pad if pad is not None else (eos_ids[0] if eos_ids else 0),
            eos_token_ids=eos_ids,
        )

    @property
    def max_positions(self) -> int:
        return self.max_position_embeddings


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        h, d = cfg.hidden_size, cfg.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, d
        self.qkv_proj = nn.Linear(h, (self.num_heads + 2 * self.num_kv_heads) * d, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.num_heads * d, h, bias=cfg.attention_bias)
        self.q_norm = RMSNorm(d, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(d, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.gate_up_proj = nn.Linear(h, 2 * cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, h, bias=cfg.mlp_bias)
        self.input_layernorm = RMSNorm(h, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(h, cfg.rms_norm_eps)

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x [batch, seq, hidden] -> q [batch, seq, heads, dim], k/v [batch, seq, kv_heads, dim]."""
        batch, seq, _ = x.shape
        nq, nkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        q, k, v = self.qkv_proj(x).split([nq * d, nkv * d, nkv * d], dim=-1)
        q, k, v = q.view(batch, seq, nq, d), k.view(batch, seq, nkv, d), v.view(batch, seq, nkv, d)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return rotate(q, cos, sin), rotate(k, cos, sin), v

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attention: Attention
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.qkv(self.input_layernorm(x), cos, sin)
        x = x + self.o_proj(attention(q, k, v))
        gate, up = self.gate_up_proj(self.post_attention_layernorm(x)).chunk(2, dim=-1)
        return x + self.down_proj(F.silu(gate) * up), k, v


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal self-attention over right-padded rows (real tokens never see padding).
    q [batch, seq, heads, dim], k/v [batch, seq, kv_heads, dim] -> [batch, seq, heads * dim]."""
    batch, seq, heads, dim = q.shape
    groups = heads // k.shape[2]
    k, v = k.repeat_interleave(groups, dim=2), v.repeat_interleave(groups, dim=2)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
    return out.transpose(1, 2).reshape(batch, seq, heads * dim)


def decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cached_k: torch.Tensor, cached_v: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """One query token per row against its cached keys plus its own key.

    Query heads are grouped under their kv head (heads = kv_heads * groups), so GQA needs no
    copy of the cache: the groups play the role of the query length.
    q [batch, 1, heads, dim]; k/v [batch, 1, kv_heads, dim]; cached_k/v [batch, ctx, kv_heads, dim];
    mask [batch, 1, 1, ctx + 1] bool. Returns [batch, 1, heads * dim].
    """
    batch, _, heads, dim = q.shape
    kv_heads = k.shape[2]
    keys = torch.cat([cached_k, k], dim=1).transpose(1, 2)  # [batch, kv_heads, ctx + 1, dim]
    values = torch.cat([cached_v, v], dim=1).transpose(1, 2)
    grouped = q.view(batch, kv_heads, heads // kv_heads, dim)
    out = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=mask)
    return out.reshape(batch, 1, heads * dim)


def prefill_layer(layer: DecoderLayer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One layer of a prefill: the unit the runner compiles (one small graph serves every layer)."""
    return layer(x, cos, sin, causal_attention)


def decode_layer(layer: DecoderLayer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cached_k: torch.Tensor,
                 cached_v: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One layer of a decode step against this layer's gathered cache (the compiled unit)."""

    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return decode_attention(q, k, v, cached_k, cached_v, mask)

    return layer(x, cos, sin, attention)


class LlamaForCausalLM(nn.Module):
    """Decoder with an LM head (tied to the embeddings when the config says so)."""

    has_lm_head = True

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        untied = self.has_lm_head and not cfg.tie_word_embeddings
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False) if untied else None
        self.inv_freq = rope_inv_freq(cfg.rope, cfg.head_dim)  # a plain CPU tensor: never on the meta device, never cast

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any]) -> DecoderConfig:
        return DecoderConfig.from_hf(hf)

    def rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [batch, seq] -> cos, sin [batch, seq, 1, head_dim] in `dtype`."""
        freqs = positions[..., None].float() * self.inv_freq  # [batch, seq, dim / 2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, :, None, :]
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states [..., hidden] -> float32 logits [..., vocab]."""
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden, weight).float()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[batch, seq] right-padded ids -> final hidden states [batch, seq, hidden]."""
        x = self.embed_tokens(input_ids)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None].expand_as(input_ids)
        cos, sin = self.rope(positions, x.dtype)
        for layer in self.layers:
            x, _, _ = layer(x, cos, sin, causal_attention)
        return self.norm(x)

    def prefill(self, input_ids: torch.Tensor, last_index: torch.Tensor,
                layer_fn: Callable[..., tuple[torch.Tensor, ...]] = prefill_layer) -> tuple[torch.Tensor, ...]:
        """Prompts from position 0. Returns last-token logits [batch, vocab] (float32), hidden
        states [batch, seq, hidden] and keys/values [layers, 2, batch, seq, kv_heads, dim].
        layer_fn runs one layer (the runner passes a compiled prefill_layer)."""
        x = self.embed_tokens(input_ids)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None].expand_as(input_ids)
        cos, sin = self.rope(positions, x.dtype)
        keys, values = [], []
        for layer in self.layers:
            x, k, v = layer_fn(layer, x, cos, sin)
            keys.append(k)
            values.append(v)
        hidden = self.norm(x)
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_index]  # [batch, hidden]
        return self.logits(last), hidden, torch.stack([torch.stack(keys), torch.stack(values)], dim=1)

    def decode(
        self, input_ids: torch.Tensor, positions: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
        layer_fn: Callable[..., tuple[torch.Tensor, ...]] = decode_layer,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One token per row at `positions` [batch]; row i's earlier tokens are in the cache blocks
        block_tables[i] (kv_cache [layers, 2, num_blocks, block_size, kv_heads, dim]).
        Returns logits [batch, vocab] (float32) and new keys/values [layers, 2, batch, kv_heads, dim]."""
        batch, num_blocks = block_tables.shape
        ctx = num_blocks * kv_cache.shape[3]
        x = self.embed_tokens(input_ids)[:, None]  # [batch, 1, hidden]
        cos, sin = self.rope(positions[:, None], x.dtype)
        is_cached = torch.arange(ctx, device=x.device)[None] < positions[:, None]  # [batch, ctx]
        mask = torch.cat([is_cached, is_cached.new_ones(batch, 1)], dim=1)[:, None, None, :]
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            shape = (batch, ctx, *kv_cache.shape[4:])
            cached_k = kv_cache[i, 0][block_tables].view(shape)
            cached_v = kv_cache[i, 1][block_tables].view(shape)
            x, k, v = layer_fn(layer, x, cos, sin, cached_k, cached_v, mask)
            keys.append(k[:, 0])
            values.append(v[:, 0])
        return self.logits(self.norm(x[:, 0])), torch.stack([torch.stack(keys), torch.stack(values)], dim=1)

    def convert_checkpoint(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """HF checkpoint names -> this module's names, fusing q/k/v and gate/up."""
        weights = {k.removeprefix("model."): v for k, v in weights.items()}
        out = {"embed_tokens.weight": weights["embed_tokens.weight"], "norm.weight": weights["norm.weight"]}
        if self.lm_head is not None:
            out["lm_head.weight"] = weights["lm_head.weight"]
        for i in range(self.config.num_hidden_layers):
            src, dst = f"layers.{i}.", f"layers.{i}."
            for kind in ("weight", "bias"):
                qkv = [weights.get(f"{src}self_attn.{p}_proj.{kind}") for p in "qkv"]
                if qkv[0] is not None:
                    out[f"{dst}qkv_proj.{kind}"] = torch.cat(qkv)
                gate_up = [weights.get(f"{src}mlp.{p}_proj.{kind}") for p in ("gate", "up")]
                if gate_up[0] is not None:
                    out[f"{dst}gate_up_proj.{kind}"] = torch.cat(gate_up)
                for theirs, ours in _LAYER_NAMES.items():
                    if f"{src}{theirs}.{kind}" in weights:
                        out[f"{dst}{ours}.{kind}"] = weights[f"{src}{theirs}.{kind}"]
        return out


class LlamaModel(LlamaForCausalLM):
    """The decoder without an LM head: LAST-token embedders (Qwen3-Embedding, e5-mistral)."""

    has_lm_head = False
    int8_by_default = False
    """Not measured in int8, and compiled whole: quantization="auto" keeps them in float."""


_LAYER_NAMES = {
    "self_attn.o_proj": "o_proj",
    "self_attn.q_norm": "q_norm",
    "self_attn.k_norm": "k_norm",
    "mlp.down_proj": "down_proj",
    "input_layernorm": "input_layernorm",
    "post_attention_layernorm": "post_attention_layernorm",
}
