"""DistilBERT (msmarco-distilbert-*, distilbert-base-*): BERT's post-LayerNorm encoder layer with
other weight names and no segment embeddings, so it runs as ember.model.bert's modules."""

from __future__ import annotations

from typing import Any

import torch

from ember.model.bert import BertForSequenceClassification, BertModel, EncoderConfig, _strip_prefixes

_LAYER_NAMES = {
    "attention.out_lin": "attn_out",
    "sa_layer_norm": "attn_norm",
    "ffn.lin1": "ffn_in",
    "ffn.lin2": "ffn_out",
    "output_layer_norm": "ffn_norm",
}


def _config(hf: dict[str, Any], num_labels: int = 0) -> EncoderConfig:
    """DistilBertConfig's names -> EncoderConfig (LayerNorm eps is fixed at 1e-12 in DistilBERT)."""
    return EncoderConfig.from_hf({
        "vocab_size": hf["vocab_size"], "hidden_size": hf["dim"], "num_hidden_layers": hf["n_layers"],
        "num_attention_heads": hf["n_heads"], "intermediate_size": hf["hidden_dim"],
        "hidden_act": hf.get("activation", "gelu"), "layer_norm_eps": 1e-12,
        "max_position_embeddings": hf["max_position_embeddings"], "type_vocab_size": 0,
        "pad_token_id": hf.get("pad_token_id") or 0,
    }, position_offset=0, num_labels=num_labels)


def _convert(model: BertModel, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    weights = _strip_prefixes(weights, ("distilbert.",))
    out = {k: v for k, v in weights.items() if k.startswith("embeddings.") and not k.endswith("position_ids")}
    for i in range(model.config.num_hidden_layers):
        src, dst = f"transformer.layer.{i}.", f"layers.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"qkv.{kind}"] = torch.cat([weights[src + f"attention.{p}_lin.{kind}"] for p in "qkv"])
            for theirs, ours in _LAYER_NAMES.items():
                out[dst + f"{ours}.{kind}"] = weights[src + f"{theirs}.{kind}"]
    return out


class DistilBertModel(BertModel):
    checkpoint_prefixes = ("distilbert.",)

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any]) -> EncoderConfig:
        return _config(hf)

    def convert_checkpoint(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return _convert(self, weights)


class DistilBertForSequenceClassification(BertForSequenceClassification):
    """pre_classifier -> ReLU -> classifier on the first token. DistilBERT reads no segment ids:
    a pair is only its [SEP]s, so the whole model may compile."""

    uses_token_types = False
    head_names = {"pre_classifier": "dense", "classifier": "out"}
    head_activation = staticmethod(torch.relu)

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any]) -> EncoderConfig:
        return _config(hf, int(hf.get("num_labels") or len(hf.get("id2label") or {}) or 2))

    def convert_checkpoint(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = _convert(self, weights)
        for theirs, ours in self.head_names.items():
            for kind in ("weight", "bias"):
                out[f"head.{ours}.{kind}"] = weights[f"{theirs}.{kind}"]
        return out
