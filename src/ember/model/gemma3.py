"""Gemma3 text models as encoders (EmbeddingGemma: bidirectional, mean-pooled, then the
sentence-transformers Dense modules), in plain torch.

Gemma3's layer: RMSNorm scaled by (1 + weight) before and after both attention and the MLP, q/k
norms per head, grouped-query attention scaled by query_pre_attn_scalar^-0.5, a gated tanh-GELU
MLP, embeddings times sqrt(hidden). Layers alternate between a sliding window and the whole
text, each kind with its own RoPE. With use_bidirectional_attention (EmbeddingGemma) a token sees
both directions (a sliding layer: within half the window either side, as transformers counts it);
without it the model is causal and embeds with LAST pooling like the other decoders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ember.errors import UnsupportedModelError
from ember.model.bert import _ACTIVATIONS
from ember.model.layers.rotary import rope_inv_freq, rope_parameters, rotate

GLOBAL, LOCAL = "full_attention", "sliding_attention"


@dataclass(frozen=True, slots=True)
class Gemma3Config:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    hidden_act: str
    rms_norm_eps: float
    query_pre_attn_scalar: float
    max_position_embeddings: int
    pad_token_id: int
    layer_types: tuple[str, ...]
    rope: dict[str, dict[str, Any]]
    """rope_parameters per layer kind (GLOBAL, LOCAL)."""
    sliding_window: int
    bidirectional: bool
    num_labels: int = 0

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> Gemma3Config:
        layers = hf["num_hidden_layers"]
        pattern = int(hf.get("sliding_window_pattern", 6))
        types = tuple(hf.get("layer_types") or [LOCAL if (i + 1) % pattern else GLOBAL for i in range(layers)])
        if len(types) != layers or set(types) - {GLOBAL, LOCAL}:
            raise UnsupportedModelError(f"layer_types must list {layers} of {GLOBAL!r} / {LOCAL!r}, got {list(types)}")
        given = hf.get("rope_parameters") or {}
        rope = {
            GLOBAL: rope_parameters({"rope_parameters": given.get(GLOBAL) or hf.get("rope_scaling"),
                                     "rope_theta": hf.get("rope_theta", 1_000_000.0)}),
            LOCAL: rope_parameters({"rope_parameters": given.get(LOCAL),
                                    "rope_theta": hf.get("rope_local_base_freq", 10_000.0)}),
        }
        act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
        if act not in _ACTIVATIONS:
            raise UnsupportedModelError(f"hidden_activation={act!r} is not supported; supported: {sorted(_ACTIVATIONS)}")
        if hf.get("attn_logit_softcapping") is not None:
            raise UnsupportedModelError("attn_logit_softcapping is not supported (Gemma2-style capping)")
        heads = hf["num_attention_heads"]
        head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
        pad = hf.get("pad_token_id")
        return cls(
            vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=hf.get("num_key_value_heads", heads), head_dim=head_dim,
            intermediate_size=hf["intermediate_size"], hidden_act=act, rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar", head_dim)),
            max_position_embeddings=hf.get("max_position_embeddings", 131_072),
            pad_token_id=0 if pad is None else pad, layer_types=types, rope=rope,
            sliding_window=int(hf.get("sliding_window") or 4096),
            bidirectional=bool(hf.get("use_bidirectional_attention", False)),
        )

    @property
    def max_positions(self) -> int:
        return self.max_position_embeddings


class GemmaRMSNorm(nn.Module):
    """RMSNorm in float32, scaled by (1 + weight): Gemma stores the weight's offset from 1."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * (1.0 + self.weight.float())).to(x.dtype)


class Gemma3Layer(nn.Module):
    def __init__(self, cfg: Gemma3Config, index: int) -> None:
        super().__init__()
        h, d = cfg.hidden_size, cfg.head_dim
        self.kind = cfg.layer_types[index]
        self.heads, self.kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, d
        self.scale = cfg.query_pre_attn_scalar ** -0.5
        self.attn_norm = GemmaRMSNorm(h, cfg.rms_norm_eps)
        self.qkv = nn.Linear(h, (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * d, bias=False)
        self.q_norm = GemmaRMSNorm(d, cfg.rms_norm_eps)
        self.k_norm = GemmaRMSNorm(d, cfg.rms_norm_eps)
        self.attn_out = nn.Linear(cfg.num_attention_heads * d, h, bias=False)
        self.post_attn_norm = GemmaRMSNorm(h, cfg.rms_norm_eps)
        self.ffn_norm = GemmaRMSNorm(h, cfg.rms_norm_eps)
        self.ffn_in = nn.Linear(h, 2 * cfg.intermediate_size, bias=False)
        """gate_proj and up_proj in one linear."""
        self.ffn_out = nn.Linear(cfg.intermediate_size, h, bias=False)
        self.post_ffn_norm = GemmaRMSNorm(h, cfg.rms_norm_eps)
        self.act = _ACTIVATIONS[cfg.hidden_act]()

    def forward(self, x: torch.Tensor, mask: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        qkv = self.qkv(self.attn_norm(x))
        q, k, v = qkv.split([self.heads * self.head_dim, self.kv_heads * self.head_dim,
                             self.kv_heads * self.head_dim], dim=-1)
        q = rotate(self.q_norm(q.view(batch, seq, self.heads, self.head_dim)), cos, sin)
        k = rotate(self.k_norm(k.view(batch, seq, self.kv_heads, self.head_dim)), cos, sin)
        v = v.view(batch, seq, self.kv_heads, self.head_dim)
        groups = self.heads // self.kv_heads
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=2), v.repeat_interleave(groups, dim=2)
        attn = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                              attn_mask=mask, scale=self.scale)
        x = x + self.post_attn_norm(self.attn_out(attn.transpose(1, 2).reshape(batch, seq, -1)))
        gate, up = self.ffn_in(self.ffn_norm(x)).chunk(2, dim=-1)
        return x + self.post_ffn_norm(self.ffn_out(self.act(gate) * up))


class Gemma3TextEncoder(nn.Module):
    """Gemma3TextModel: the last hidden states [batch, seq, hidden] (after the final norm)."""

    checkpoint_prefixes = ("model.language_model.", "model.")
    int8_by_default = False
    """Not measured against its gate on a real checkpoint here (no Gemma3 weights on PyPI)."""

    def __init__(self, cfg: Gemma3Config) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Gemma3Layer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = GemmaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        # Plain CPU tensors: never on the meta device, never cast to the model's dtype.
        self.inv_freq = {kind: rope_inv_freq(params, cfg.head_dim) for kind, params in cfg.rope.items()}

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any]) -> Gemma3Config:
        return Gemma3Config.from_hf(hf)

    def _masks(self, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """[batch, 1, seq, seq] bool masks per layer kind. Every token sees itself, so a padding
        row is never all -inf (NaN would leak through its values)."""
        seq = attention_mask.shape[1]
        positions = torch.arange(seq, device=attention_mask.device)
        offset = positions[:, None] - positions[None, :]  # query - key
        keys = attention_mask.bool()[:, None, None, :]
        window = self.config.sliding_window
        if self.config.bidirectional:
            allowed = {GLOBAL: torch.ones_like(offset, dtype=torch.bool), LOCAL: offset.abs() <= window // 2}
        else:
            allowed = {GLOBAL: offset >= 0, LOCAL: (offset >= 0) & (offset < window)}
        itself = offset == 0
        return {kind: (keys & a[None, None]) | itself[None, None] for kind, a in allowed.items()}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        x = x * torch.tensor(self.config.hidden_size ** 0.5, dtype=x.dtype)
        masks = self._masks(attention_mask)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        rotations = {}
        for kind, inv_freq in self.inv_freq.items():
            freqs = positions[:, None].float() * inv_freq
            angles = torch.cat((freqs, freqs), dim=-1)[None, :, None, :]  # [1, seq, 1, dim]
            rotations[kind] = (angles.cos().to(x.dtype), angles.sin().to(x.dtype))
        for layer in self.layers:
            x = layer(x, masks[layer.kind], *rotations[layer.kind])
        return self.norm(x)

    def convert_checkpoint(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """transformers' names -> this module's, fusing q/k/v and gate/up."""
        prefix = next((p for p in self.checkpoint_prefixes if f"{p}embed_tokens.weight" in weights), "")
        src = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        out = {"embed_tokens.weight": src["embed_tokens.weight"], "norm.weight": src["norm.weight"]}
        for i in range(self.config.num_hidden_layers):
            a, b = f"layers.{i}.", f"layers.{i}."
            out[b + "qkv.weight"] = torch.cat([src[a + f"self_attn.{p}_proj.weight"] for p in "qkv"])
            out[b + "ffn_in.weight"] = torch.cat([src[a + "mlp.gate_proj.weight"], src[a + "mlp.up_proj.weight"]])
            for theirs, ours in _LAYER_NAMES.items():
                out[b + f"{ours}.weight"] = src[a + f"{theirs}.weight"]
        return out


_LAYER_NAMES = {"input_layernorm": "attn_norm", "self_attn.q_norm": "q_norm", "self_attn.k_norm": "k_norm",
                "self_attn.o_proj": "attn_out", "post_attention_layernorm": "post_attn_norm",
                "pre_feedforward_layernorm": "ffn_norm", "mlp.down_proj": "ffn_out",
                "post_feedforward_layernorm": "post_ffn_norm"}
