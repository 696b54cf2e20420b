"""Architecture name -> model class table, imported lazily."""

from __future__ import annotations

import importlib
from typing import Any

from ember.errors import UnsupportedModelError

# architectures[0] (or model_type) -> (module, class)
_ENCODERS: dict[str, tuple[str, str]] = {
    "BertModel": ("ember.model.bert", "BertModel"),
    "BertForMaskedLM": ("ember.model.bert", "BertForMaskedLM"),
    "BertForPreTraining": ("ember.model.bert", "BertModel"),
    "RobertaModel": ("ember.model.bert", "RobertaModel"),
    "RobertaForMaskedLM": ("ember.model.bert", "RobertaModel"),
    "XLMRobertaModel": ("ember.model.bert", "RobertaModel"),
    "XLMRobertaForMaskedLM": ("ember.model.bert", "RobertaModel"),
    "DistilBertModel": ("ember.model.distilbert", "DistilBertModel"),
    "MPNetModel": ("ember.model.mpnet", "MPNetModel"),
    "MPNetForMaskedLM": ("ember.model.mpnet", "MPNetModel"),
    "DistilBertForMaskedLM": ("ember.model.distilbert", "DistilBertModel"),
    "ModernBertModel": ("ember.model.modernbert", "ModernBertModel"),
    "ModernBertForMaskedLM": ("ember.model.modernbert", "ModernBertModel"),
    # Sequence classification: cross-encoders (one label) and classifiers.
    "DistilBertForSequenceClassification": ("ember.model.distilbert", "DistilBertForSequenceClassification"),
    "BertForSequenceClassification": ("ember.model.bert", "BertForSequenceClassification"),
    "RobertaForSequenceClassification": ("ember.model.bert", "RobertaForSequenceClassification"),
    "XLMRobertaForSequenceClassification": ("ember.model.bert", "RobertaForSequenceClassification"),
    "ModernBertForSequenceClassification": ("ember.model.modernbert", "ModernBertForSequenceClassification"),
    # Gemma3 text encoders (EmbeddingGemma: bidirectional), served by the encoder runner.
    "Gemma3TextModel": ("ember.model.gemma3", "Gemma3TextEncoder"),
    # Decoders without an LM head: LAST-token embedders, served by the encoder runner.
    "LlamaModel": ("ember.model.llama", "LlamaModel"),
    "Qwen2Model": ("ember.model.llama", "LlamaModel"),
    "Qwen3Model": ("ember.model.llama", "LlamaModel"),
}
# Decoders with an LM head: generation with a KV cache (and LAST-token embeddings).
_DECODERS: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": ("ember.model.llama", "LlamaForCausalLM"),
    "Qwen2ForCausalLM": ("ember.model.llama", "LlamaForCausalLM"),
    "Qwen3ForCausalLM": ("ember.model.llama", "LlamaForCausalLM"),
}
_MODEL_TYPES: dict[str, str] = {
    "bert": "BertModel",
    "roberta": "RobertaModel",
    "xlm-roberta": "XLMRobertaModel",
    "distilbert": "DistilBertModel",
    "mpnet": "MPNetModel",
    "modernbert": "ModernBertModel",
    "gemma3_text": "Gemma3TextModel",
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


def supported_architectures() -> list[str]:
    return sorted({**_ENCODERS, **_DECODERS})


def is_generative(architecture: str) -> bool:
    """Whether the architecture generates text (and so runs with a KV cache)."""
    return architecture in _DECODERS


def resolve_architecture(hf_config: dict[str, Any]) -> str:
    """Pick the architecture name from config.json, or raise UnsupportedModelError.

    A config that names its architectures is taken at its word: an architecture with a head
    Ember does not run (BertForTokenClassification, say) is refused, never served as its base
    model with the head dropped. Only a config without `architectures` falls back to model_type."""
    architectures = hf_config.get("architectures") or []
    for arch in architectures:
        if arch in _ENCODERS or arch in _DECODERS:
            return arch
    model_type = hf_config.get("model_type")
    if not architectures and model_type in _MODEL_TYPES:
        return _MODEL_TYPES[model_type]
    named = architectures or [model_type]
    raise UnsupportedModelError(
        f"unsupported architecture {named} (model_type={model_type!r}); "
        f"supported: {', '.join(supported_architectures())}"
    )


def model_class(architecture: str) -> type:
    module_name, class_name = {**_ENCODERS, **_DECODERS}[architecture]
    return getattr(importlib.import_module(module_name), class_name)
