"""Ember: a CPU-first inference engine for embedding models."""

from __future__ import annotations

from ember import omp_defaults

omp_defaults.apply()  # before anything below imports torch

from ember.config import EngineConfig
from ember.entrypoints.llm import LLM
from ember.entrypoints.sentence_transformer import SentenceTransformer
from ember.errors import (
    EmberError,
    EngineDeadError,
    InvalidRequestError,
    ModelNotFoundError,
    OverloadedError,
    UnsupportedModelError,
)
from ember.outputs import (
    CompilationTimes,
    CompletionOutput,
    EmbeddingOutput,
    EmbeddingRequestOutput,
    RequestOutput,
)
from ember.params import PoolingParams, SamplingParams

__version__ = "0.1.0"

__all__ = [
    "LLM",
    "CompilationTimes",
    "CompletionOutput",
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
    "SamplingParams",
    "SentenceTransformer",
    "UnsupportedModelError",
]
