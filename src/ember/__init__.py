"""Ember: a CPU-first inference engine for embedding, reranking and classification models."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ember import omp_defaults

if TYPE_CHECKING:
    from ember.config import EngineConfig
    from ember.entrypoints.cross_encoder import CrossEncoder
    from ember.entrypoints.llm import LLM
    from ember.entrypoints.sentence_transformer import SentenceTransformer
    from ember.errors import (
        BatchFailedError,
        CorruptModelError,
        EmberError,
        EngineDeadError,
        InvalidRequestError,
        ModelNotFoundError,
        OverloadedError,
        UnsupportedModelError,
    )
    from ember.outputs import (
        ClassificationOutput,
        ClassificationRequestOutput,
        CompilationTimes,
        CompletionOutput,
        EmbeddingChunk,
        EmbeddingOutput,
        EmbeddingRequestOutput,
        RequestOutput,
        RerankOutput,
        ScoringOutput,
        ScoringRequestOutput,
        SparseEmbedding,
        SparseRequestOutput,
    )
    from ember.params import PoolingParams, SamplingParams

_EXPORTS = {
    "EngineConfig": "ember.config", "LLM": "ember.entrypoints.llm",
    "SentenceTransformer": "ember.entrypoints.sentence_transformer", "CrossEncoder": "ember.entrypoints.cross_encoder",
    **dict.fromkeys(("BatchFailedError", "CorruptModelError", "EmberError", "EngineDeadError", "InvalidRequestError", "ModelNotFoundError", "OverloadedError",
                     "UnsupportedModelError"), "ember.errors"),
    **dict.fromkeys(("ClassificationOutput", "ClassificationRequestOutput", "CompilationTimes", "CompletionOutput",
                     "EmbeddingChunk", "EmbeddingOutput", "EmbeddingRequestOutput", "RequestOutput", "RerankOutput", "ScoringOutput",
                     "ScoringRequestOutput", "SparseEmbedding", "SparseRequestOutput"), "ember.outputs"),
    **dict.fromkeys(("PoolingParams", "SamplingParams"), "ember.params"),
}


def __getattr__(name: str) -> object:
    """The public names load on first use, so that `import ember` (and `ember --help`) does not
    load torch; torch is loaded then, with the OpenMP spin default (omp_defaults.py)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ember' has no attribute {name!r}")
    import importlib

    omp_defaults.apply()  # before anything below imports torch
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "LLM",
    "BatchFailedError",
    "ClassificationOutput",
    "ClassificationRequestOutput",
    "CompilationTimes",
    "CompletionOutput",
    "CorruptModelError",
    "CrossEncoder",
    "EmbeddingChunk",
    "EmbeddingOutput",
    "EmbeddingRequestOutput",
    "EmberError",
    "EngineConfig",
    "EngineDeadError",
    "InvalidRequestError",
    "ModelNotFoundError",
    "OverloadedError",
    "PoolingParams",
    "RequestOutput",
    "RerankOutput",
    "SamplingParams",
    "ScoringOutput",
    "ScoringRequestOutput",
    "SentenceTransformer",
    "SparseEmbedding",
    "SparseRequestOutput",
    "UnsupportedModelError",
]
