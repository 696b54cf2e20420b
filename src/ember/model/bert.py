"""BERT and RoBERTa/XLM-RoBERTa encoders in plain torch.

Inputs are right-padded [batch, seq] token ids with a 0/1 attention mask, so the runner can feed
bucketed batches of any shape. q/k/v are fused into one linear on load.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ember.errors import UnsupportedModelError
from ember.model.layers.attention import encoder_attention, padding_mask

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": nn.ReLU,
    "silu": nn.SiLU,
}
"""Modules, not functions, so that the int8 mode can find and swap them (runner/int8/)."""


@dataclass(frozen=True, slots=True)
class EncoderConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str
    layer_norm_eps: float
    max_position_embeddings: int
    type_vocab_size: int
    pad_token_id: int
    position_offset: int
    """RoBERTa numbers positions from pad_token_id + 1; BERT from 0."""
    num_labels: int = 0
    """Outputs of the classification head (sequence-classification checkpoints); 0: no head."""

    @classmethod
    def from_hf(cls, hf: dict[str, Any], *, position_offset: int, num_labels: int = 0) -> EncoderConfig:
        kind = hf.get("position_embedding_type", "absolute")
        if kind != "absolute":
            raise UnsupportedModelError(f"position_embedding_type={kind!r} is not supported (only 'absolute')")
        act = hf.get("hidden_act", "gelu")
        if act not in _ACTIVATIONS:
            raise UnsupportedModelError(f"hidden_act={act!r} is not supported; supported: {sorted(_ACTIVATIONS)}")
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=hf["num_attention_heads"],
            intermediate_size=hf["intermediate_size"],
            hidden_act=act,
            layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
            max_position_embeddings=hf["max_position_embeddings"],
            type_vocab_size=hf.get("type_vocab_size", 2),
            pad_token_id=hf.get("pad_token_id") or 0,
            position_offset=position_offset,
            num_labels=num_labels,
        )

    @property
    def max_positions(self) -> int:
        """Longest sequence the position table allows."""
        return self.max_position_embeddings - self.position_offset


class Embeddings(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        # DistilBERT has no segment embeddings (type_vocab_size 0).
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size) if cfg.type_vocab_size else None
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.position_offset = cfg.position_offset

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        seq = input_ids.shape[1]
        # Right padding: every real token's position is its index (plus RoBERTa's offset): a slice
        # of the table (eager, this is one op fewer than arange + a lookup, ~15-30 us at a query's size).
        positions = self.position_embeddings.weight[self.position_offset:self.position_offset + seq]
        x = self.word_embeddings(input_ids) + positions[None]
        if self.token_type_embeddings is None:
            pass
        elif token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.LayerNorm(x)


class EncoderLayer(nn.Module):
    FEED_FORWARD = ("ffn_in", "act", "ffn_out")
    """forward computes ffn_out(act(ffn_in(x))) with nothing in between: the int8 model may run the
    middle (act, and ffn_out's input quantization) as one op (runner/int8/linear.py)."""
    ATTENTION_INPUT = "qkv"
    """The fused q/k/v projection, which forward hands straight to encoder_attention: an int8
    projection may hand it its accumulator instead (runner/int8/linear.py)."""
    attention_narrow = False
    """Attention's products in bf16 or int16 where the kernel has them (kernels/attention.py): set
    by the int8 model (runner/int8), whose gate measures it; float models keep float32."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.qkv = nn.Linear(h, 3 * h)
        self.attn_out = nn.Linear(h, h)
        self.attn_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.ffn_in = nn.Linear(h, cfg.intermediate_size)
        self.ffn_out = nn.Linear(cfg.intermediate_size, h)
        self.ffn_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.act = _ACTIVATIONS[cfg.hidden_act]()

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        attn = encoder_attention(self.qkv(x), self.num_heads, attn_mask, narrow=self.attention_narrow)
        x = self.attn_norm(x + self.attn_out(attn))
        return self.ffn_norm(x + self.ffn_out(self.act(self.ffn_in(x))))


class BertModel(nn.Module):
    """Encoder returning the last hidden states [batch, seq, hidden]."""

    position_offset_from_pad = False
    checkpoint_prefixes = ("bert.", "model.")
    int8_by_default = True
    """quantization="auto" may pick int8: measured on all-MiniLM-L6-v2 (BENCHMARKS.md), and the
    layers compile as one graph, which keeps the first start short."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any]) -> EncoderConfig:
        offset = (hf.get("pad_token_id") or 0) + 1 if cls.position_offset_from_pad else 0
        return EncoderConfig.from_hf(hf, position_offset=offset)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x, mask = self.embed(input_ids, attention_mask, token_type_ids)
        for layer in self.layers:
            x = layer(x, mask)
        return x

    def embed(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What every layer takes: the embedded tokens [batch, seq, hidden] and the attention mask.
        (The compiled path runs this eagerly, then one compiled graph per layer: aot_package.py.)"""
        return self.embeddings(input_ids, token_type_ids), padding_mask(attention_mask)

    def convert_checkpoint(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """HF checkpoint names -> this module's names, fusing q/k/v."""
        weights = _strip_prefixes(weights, self.checkpoint_prefixes)
        out: dict[str, torch.Tensor] = {}
        for name, tensor in weights.items():
            if name.startswith("embeddings.") and not name.endswith("position_ids"):
                out[name] = tensor
        for i in range(self.config.num_hidden_layers):
            src, dst = f"encoder.layer.{i}.", f"layers.{i}."
            for kind in ("weight", "bias"):
                out[dst + f"qkv.{kind}"] = torch.cat(
                    [weights[src + f"attention.self.{p}.{kind}"] for p in ("query", "key", "value")]
                )
                for theirs, ours in _LAYER_NAMES.items():
                    out[dst + f"{ours}.{kind}"] = weights[src + f"{theirs}.{kind}"]
        return out


class RobertaModel(BertModel):
    position_offset_from_pad = True
    checkpoint_prefixes = ("roberta.", "model.")


class MaskedLMHead(nn.Module):
    """BERT's masked-LM head: dense -> activation -> LayerNorm -> a logit per vocabulary token (the
    decoder is tied to the word embeddings unless the checkpoint has its own). SPLADE's sparse
    vectors are read from it (model/heads.py: SpladeWeights). Runs after the compiled encoder,
    unquantized (float32 under int8), on the real tokens of a row only."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.activation = _ACTIVATIONS[cfg.hidden_act]()
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[tokens, hidden] -> [tokens, vocab] logits."""
        return self.decoder(self.norm(self.activation(self.dense(hidden))))


class BertForMaskedLM(BertModel):
    """BERT with its masked-LM head (SPLADE checkpoints, and masked-LM BERTs used as embedders):
    forward() stays the hidden states; `sparse_head` serves the sparse task."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__(cfg)
        self.sparse_head = MaskedLMHead(cfg)

    def convert_checkpoint(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = super().convert_checkpoint(weights)
        names = {"transform.dense": "dense", "transform.LayerNorm": "norm"}
        try:
            for theirs, ours in names.items():
                for kind in ("weight", "bias"):
                    out[f"sparse_head.{ours}.{kind}"] = weights[f"cls.predictions.{theirs}.{kind}"]
        except KeyError as exc:
            raise UnsupportedModelError(f"the checkpoint has no masked-LM head tensor {exc}: architectures "
                                        "BertForMaskedLM needs it (name the folder's architecture BertModel to "
                                        "serve the encoder alone)") from exc
        out["sparse_head.decoder.weight"] = weights.get("cls.predictions.decoder.weight",
                                                        out["embeddings.word_embeddings.weight"])  # tied
        out["sparse_head.decoder.bias"] = weights.get("cls.predictions.decoder.bias", weights["cls.predictions.bias"])
        return out


class ClassificationHead(nn.Module):
    """dense -> tanh -> out on the first token: BERT's pooler + classifier, RoBERTa's classification
    head (dropout is the identity at inference). Runs after the compiled encoder, in float32."""

    def __init__(self, hidden_size: int, num_labels: int, activation: Callable[[torch.Tensor], torch.Tensor] = torch.tanh
                 ) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, num_labels)
        self.activation = activation
        """tanh (BERT, RoBERTa) or relu (DistilBERT's pre_classifier)."""

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[batch, seq, hidden] -> logits [batch, num_labels] (from the first token: the mask is unused)."""
        return self.out(self.activation(self.dense(hidden[:, 0])))


class BertForSequenceClassification(BertModel):
    """A cross-encoder (one label) or classifier: the encoder, then `head` on the [CLS] token.
    forward() stays the encoder's hidden states (the compiled graph); the runner applies the head."""

    uses_token_types = True
    """Pairs are told apart by segment ids, which the embeddings read (so they run in front of the
    compiled layers: runner/model_runner.py)."""
    head_names = {"bert.pooler.dense": "dense", "classifier": "out"}
    head_activation: Callable[[torch.Tensor], torch.Tensor] = staticmethod(torch.tanh)

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__(cfg)
        self.head = ClassificationHead(cfg.hidden_size, cfg.num_labels, self.head_activation)

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any]) -> EncoderConfig:
        offset = (hf.get("pad_token_id") or 0) + 1 if cls.position_offset_from_pad else 0
        num_labels = int(hf.get("num_labels") or len(hf.get("id2label") or {}) or 2)
        return EncoderConfig.from_hf(hf, position_offset=offset, num_labels=num_labels)

    def convert_checkpoint(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = super().convert_checkpoint(weights)
        for theirs, ours in self.head_names.items():
            for kind in ("weight", "bias"):
                out[f"head.{ours}.{kind}"] = weights[f"{theirs}.{kind}"]
        return out


class RobertaForSequenceClassification(BertForSequenceClassification):
    position_offset_from_pad = True
    checkpoint_prefixes = ("roberta.", "model.")
    head_names = {"classifier.dense": "dense", "classifier.out_proj": "out"}


_LAYER_NAMES = {
    "attention.output.dense": "attn_out",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "ffn_in",
    "output.dense": "ffn_out",
    "output.LayerNorm": "ffn_norm",
}


def _strip_prefixes(weights: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    for prefix in prefixes:
        if any(k.startswith(prefix + "embeddings.") for k in weights):
            return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    return weights
