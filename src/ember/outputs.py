"""Result types returned by the offline API (vLLM-compatible attribute names)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(slots=True)
class EmbeddingOutput:
    """One pooled vector. `data` is a float32 numpy array; `embedding` a list (vLLM)."""

    data: np.ndarray

    @property
    def embedding(self) -> list[float]:
        return self.data.tolist()

    @property
    def hidden_size(self) -> int:
        return int(self.data.shape[-1])


@dataclass(slots=True)
class EmbeddingChunk:
    """One chunk of a text embedded in chunks: the characters it covers, text[start:end], its
    token count (special tokens included) and, with return_chunks, its own vector."""

    start: int
    end: int
    num_tokens: int
    embedding: np.ndarray | None = None


@dataclass(slots=True)
class EmbeddingRequestOutput:
    """The result of one prompt, in the order the prompts were given. A text embedded in chunks
    (long_inputs="chunk") has `chunks` and no prompt_token_ids of its own."""

    request_id: str
    outputs: EmbeddingOutput
    prompt_token_ids: list[int]
    truncated: bool = False
    finished: bool = True
    chunks: list[EmbeddingChunk] | None = None

    @property
    def num_prompt_tokens(self) -> int:
        if self.chunks is not None:
            return sum(c.num_tokens for c in self.chunks)
        return len(self.prompt_token_ids)

    @property
    def is_chunked(self) -> bool:
        return self.chunks is not None


@dataclass(slots=True)
class SparseEmbedding:
    """Lexical weights of one text (SPLADE): vocabulary token ids and their weights, highest first;
    every other token weighs 0."""

    indices: np.ndarray
    values: np.ndarray

    @classmethod
    def from_weights(cls, weights: np.ndarray, top_k: int | None = None, threshold: float = 0.0) -> SparseEmbedding:
        """The entries of a [vocab] weight vector above `threshold`, the `top_k` largest (None: all)."""
        kept = np.flatnonzero(weights > threshold)
        order = kept[np.argsort(-weights[kept], kind="stable")][:top_k]
        return cls(order.astype(np.int64), weights[order].astype(np.float32))

    def to_dict(self) -> dict[int, float]:
        return dict(zip(self.indices.tolist(), self.values.tolist()))


@dataclass(slots=True)
class SparseRequestOutput:
    request_id: str
    outputs: SparseEmbedding
    prompt_token_ids: list[int]
    truncated: bool = False
    finished: bool = True


@dataclass(slots=True)
class HybridEmbedding:
    """One text's outputs from one forward (bge-m3): the dense vector, the lexical weights and the
    multi-vector ([tokens - 1, dim], one per token after [CLS]); None where the model has no such
    head (a SPLADE model has no multi-vector)."""

    dense: np.ndarray
    sparse: SparseEmbedding | None
    multi_vector: np.ndarray | None


@dataclass(slots=True)
class HybridRequestOutput:
    request_id: str
    outputs: HybridEmbedding
    prompt_token_ids: list[int]
    truncated: bool = False
    finished: bool = True


@dataclass(slots=True)
class ClassificationOutput:
    """One prompt's class scores: probabilities (or logits, with use_activation=False), label order."""

    probs: list[float]

    @property
    def num_classes(self) -> int:
        return len(self.probs)


@dataclass(slots=True)
class ClassificationRequestOutput:
    request_id: str
    outputs: ClassificationOutput
    prompt_token_ids: list[int]
    label: str
    """The label of the highest score."""
    truncated: bool = False
    finished: bool = True


@dataclass(slots=True)
class ScoringOutput:
    """One pair's relevance: a cross-encoder's score (sigmoid of its logit by default) or the
    cosine of an embedding model's two vectors."""

    score: float


@dataclass(slots=True)
class ScoringRequestOutput:
    request_id: str
    outputs: ScoringOutput
    prompt_token_ids: list[int]
    """A cross-encoder's pair tokens; for a bi-encoder, both texts' tokens in turn."""
    finished: bool = True


@dataclass(slots=True)
class RerankOutput:
    """`LLM.rerank`: documents by decreasing relevance, with the tokens the model read."""

    results: list[Any]
    """RankedDocument(index, relevance_score, document), best first."""
    num_tokens: int


@dataclass(slots=True)
class CompilationTimes:
    """Seconds spent compiling before ready, per model part (vLLM's names)."""

    language_model: float = 0.0
    encoder: float = 0.0

    @property
    def total(self) -> float:
        return self.language_model + self.encoder


@dataclass(slots=True)
class ReadyReport:
    """What startup did, logged in the readiness line and returned by `llm.stats()`."""

    compilation_times: CompilationTimes = field(default_factory=CompilationTimes)
    warmup_s: float = 0.0
    num_warmed_shapes: int = 0
    startup_s: float = 0.0
    rss_bytes: int = 0
    threads: int = 0
    """Intra-op threads the model runs."""


@dataclass(slots=True)
class CompletionOutput:
    """One generated continuation (vLLM names)."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    """"stop" (EOS, a stop id or string), "length" (max_tokens or the context), or None while running."""
    stop_reason: int | str | None = None
    """The stop string or token id that ended it, when one did."""


@dataclass(slots=True)
class RequestOutput:
    """The result of one prompt passed to `LLM.generate`, in the order the prompts were given."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = True
