"""ModernBERT (modernbert-embed, gte-modernbert, their rerankers) in plain torch.

Pre-LayerNorm layers without biases, rotary positions, a gated GELU MLP, and attention that
alternates: every `global_attn_every_n_layers`-th layer sees the whole text, the others a local
window of `local_attention` tokens (a token sees those within half the window on either side),
each kind with its own RoPE base. transformers unpads the batch for flash attention; on CPU the
same result comes from a padded batch with a key mask, which is what the compiled graph takes.

The layers differ (the first has no attention norm, local and global layers take other masks
and rotations), so the whole model compiles as one graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ember.errors import UnsupportedModelError
from ember.model.bert import _ACTIVATIONS
from ember.model.layers.rotary import rope_inv_freq, rotate

GLOBAL, LOCAL = "full_attention", "sliding_attention"


@dataclass(frozen=True, slots=True)
class ModernBertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str
    norm_eps: float
    norm_bias: bool
    attention_bias: bool
    mlp_bias: bool
    max_position_embeddings: int
    pad_token_id: int
    layer_types: tuple[str, ...]
    rope_theta: dict[str, float]
    """RoPE base per layer kind (GLOBAL, LOCAL)."""
    local_attention: int
    num_labels: int = 0
    classifier_pooling: str = "cls"
    classifier_activation: str = "gelu"
    classifier_bias: bool = False

    @classmethod
    def from_hf(cls, hf: dict[str, Any], num_labels: int = 0) -> ModernBertConfig:
        layers = hf["num_hidden_layers"]
        every = int(hf.get("global_attn_every_n_layers", 3))
        types = tuple(hf.get("layer_types") or [LOCAL if i % every else GLOBAL for i in range(layers)])
        rope = hf.get("rope_parameters") or {}
        theta = {GLOBAL: float((rope.get(GLOBAL) or {}).get("rope_theta", hf.get("global_rope_theta", 160_000.0))),
                 LOCAL: float((rope.get(LOCAL) or {}).get("rope_theta", hf.get("local_rope_theta", 10_000.0)))}
        for kind, params in rope.items():
            if isinstance(params, dict) and params.get("rope_type", "default") != "default":
                raise UnsupportedModelError(f"ModernBERT rope_type {params['rope_type']!r} ({kind}) is not supported "
                                            "(only 'default')")
        act = hf.get("hidden_activation", "gelu")
        for name, value in (("hidden_activation", act), ("classifier_activation", hf.get("classifier_activation", "gelu"))):
            if value not in _ACTIVATIONS:
                raise UnsupportedModelError(f"{name}={value!r} is not supported; supported: {sorted(_ACTIVATIONS)}")
        if len(types) != layers or set(types) - {GLOBAL, LOCAL}:
            raise UnsupportedModelError(f"layer_types must list {layers} of {GLOBAL!r} / {LOCAL!r}, got {list(types)}")
        pooling = hf.get("classifier_pooling", "cls")
        if pooling not in ("cls", "mean"):
            raise UnsupportedModelError(f"classifier_pooling={pooling!r} is not supported (cls, mean)")
        pad = hf.get("pad_token_id")
        return cls(
            vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_hidden_layers=layers,
            num_attention_heads=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
            hidden_act=act, norm_eps=hf.get("norm_eps", 1e-5), norm_bias=bool(hf.get("norm_bias", False)),
            attention_bias=bool(hf.get("attention_bias", False)), mlp_bias=bool(hf.get("mlp_bias", False)),
            max_position_embeddings=hf.get("max_position_embeddings", 8192),
            pad_token_id=50283 if pad is None else pad, layer_types=types, rope_theta=theta,
            local_attention=int(hf.get("local_attention", 128)), num_labels=num_labels,
            classifier_pooling=pooling, classifier_activation=hf.get("classifier_activation", "gelu"),
            classifier_bias=bool(hf.get("classifier_bias", False)),
        )

    @property
    def max_positions(self) -> int:
        return self.max_position_embeddings

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class ModernBertLayer(nn.Module):
    def __init__(self, cfg: ModernBertConfig, index: int) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.kind = cfg.layer_types[index]
        # The first layer's input is the normalized embeddings: it has no attention norm.
        self.attn_norm = nn.LayerNorm(h, eps=cfg.norm_eps, bias=cfg.norm_bias) if index else nn.Identity()
        self.qkv = nn.Linear(h, 3 * h, bias=cfg.attention_bias)
        self.attn_out = nn.Linear(h, h, bias=cfg.attention_bias)
        self.ffn_norm = nn.LayerNorm(h, eps=cfg.norm_eps, bias=cfg.norm_bias)
        self.ffn_in = nn.Linear(h, 2 * cfg.intermediate_size, bias=cfg.mlp_bias)
        """The GLU's input and gate halves in one linear, as the checkpoint stores them."""
        self.ffn_out = nn.Linear(cfg.intermediate_size, h, bias=cfg.mlp_bias)
        self.act = _ACTIVATIONS[cfg.hidden_act]()

    def forward(self, x: torch.Tensor, mask: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, seq, hidden = x.shape
        qkv = self.qkv(self.attn_norm(x)).view(batch, seq, 3, self.num_heads, hidden // self.num_heads)
        q, k, v = qkv.unbind(dim=2)  # [batch, seq, heads, dim]
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        attn = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        x = x + self.attn_out(attn.transpose(1, 2).reshape(batch, seq, hidden))
        gate_in, gate = self.ffn_in(self.ffn_norm(x)).chunk(2, dim=-1)
        return x + self.ffn_out(self.act(gate_in) * gate)


class ModernBertModel(nn.Module):
    """Encoder returning the last hidden states [batch, seq, hidden] (after the final norm)."""

    checkpoint_prefixes = ("model.",)
    int8_by_default = True
    """quantization="auto" may pick int8 where its gate passes on this model (runner/int8/)."""

    def __init__(self, cfg: ModernBertConfig) -> None:
        super().__init__()
        self.config = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.embed_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps, bias=cfg.norm_bias)
        self.layers = nn.ModuleList(ModernBertLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.final_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps, bias=cfg.norm_bias)
        # Plain CPU tensors: never on the meta device, never cast to the model's dtype.
        self.inv_freq = {kind: rope_inv_freq({"rope_theta": theta, "rope_type": "default"}, cfg.head_dim)
                         for kind, theta in cfg.rope_theta.items()}

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any]) -> ModernBertConfig:
        return ModernBertConfig.from_hf(hf)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed_norm(self.tok_embeddings(input_ids))
        seq = input_ids.shape[1]
        positions = torch.arange(seq, device=input_ids.device)
        keys = attention_mask.bool()[:, None, None, :]  # [batch, 1, 1, seq]
        near = (positions[None, :] - positions[:, None]).abs() <= self.config.local_attention // 2
        # A padding query far past its text's end has no real key in its window: let every token
        # see itself, or its attention row is all -inf and NaN leaks into the real rows' values.
        itself = positions[None, :] == positions[:, None]
        masks = {GLOBAL: keys, LOCAL: (keys & near[None, None]) | itself[None, None]}
        rotations = {}
        for kind, inv_freq in self.inv_freq.items():
            freqs = positions[:, None].float() * inv_freq  # [seq, dim / 2]
            angles = torch.cat((freqs, freqs), dim=-1)[None, :, None, :]  # [1, seq, 1, dim]
            rotations[kind] = (angles.cos().to(x.dtype), angles.sin().to(x.dtype))
        for layer in self.layers:
            x = layer(x, masks[layer.kind], *rotations[layer.kind])
        return self.final_norm(x)

    def convert_checkpoint(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """transformers' names -> this module's (Wqkv is already fused)."""
        prefix = next((p for p in self.checkpoint_prefixes if f"{p}embeddings.tok_embeddings.weight" in weights), "")
        src = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        out = {"tok_embeddings.weight": src["embeddings.tok_embeddings.weight"]}
        names = {"embeddings.norm": "embed_norm", "final_norm": "final_norm"}
        for i in range(self.config.num_hidden_layers):
            names.update({f"layers.{i}.{theirs}": f"layers.{i}.{ours}" for theirs, ours in _LAYER_NAMES.items()
                          if i or theirs != "attn_norm"})
        for theirs, ours in names.items():
            for kind in ("weight", "bias"):
                if f"{theirs}.{kind}" in src or kind == "weight":
                    out[f"{ours}.{kind}"] = src[f"{theirs}.{kind}"]
        return out


_LAYER_NAMES = {"attn_norm": "attn_norm", "attn.Wqkv": "qkv", "attn.Wo": "attn_out", "mlp_norm": "ffn_norm",
                "mlp.Wi": "ffn_in", "mlp.Wo": "ffn_out"}


class ModernBertHead(nn.Module):
    """ModernBERT's classification head: pool (the first token, or the mean of the real tokens),
    dense -> activation -> LayerNorm, then the classifier. Runs after the compiled encoder."""

    def __init__(self, cfg: ModernBertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.classifier_bias)
        self.activation = _ACTIVATIONS[cfg.classifier_activation]()
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps, bias=cfg.norm_bias)
        self.out = nn.Linear(cfg.hidden_size, cfg.num_labels)
        self.pooling = cfg.classifier_pooling

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[batch, seq, hidden] + [batch, seq] -> logits [batch, num_labels]."""
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask[..., None].to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1)
        return self.out(self.norm(self.activation(self.dense(pooled))))


class ModernBertForSequenceClassification(ModernBertModel):
    """A ModernBERT cross-encoder (one label) or classifier: the encoder, then `head`."""

    def __init__(self, cfg: ModernBertConfig) -> None:
        super().__init__(cfg)
        self.head = ModernBertHead(cfg)

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any]) -> ModernBertConfig:
        return ModernBertConfig.from_hf(hf, int(hf.get("num_labels") or len(hf.get("id2label") or {}) or 2))

    def convert_checkpoint(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = super().convert_checkpoint(weights)
        for theirs, ours in (("head.dense", "dense"), ("head.norm", "norm"), ("classifier", "out")):
            for kind in ("weight", "bias"):
                if f"{theirs}.{kind}" in weights:
                    out[f"head.{ours}.{kind}"] = weights[f"{theirs}.{kind}"]
        return out
