"""Wire format: pydantic request models (validation, OpenAPI) and the orjson response.

Responses are built as plain dicts and serialized by orjson (numpy arrays included); the
response models exist for the OpenAPI schema at /docs.
"""

from __future__ import annotations

import base64
from typing import Any, Literal, Union

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from starlette.responses import Response

EmbeddingInput = Union[StrictStr, list[StrictStr], list[StrictInt], list[list[StrictInt]]]


class JSONBody(Response):
    """orjson-serialized JSON; numpy float32 arrays are written without a Python-list detour."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class _Request(BaseModel):
    # Unknown fields are ignored, as clients of OpenAI-compatible servers send vendor extras.
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    """Must name the served model when given."""


class EmbeddingRequest(_Request):
    input: EmbeddingInput = Field(description="str | str[] | int[] (token ids) | int[][]")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = None
    truncate_prompt_tokens: StrictInt | None = None
    """Keep at most this many tokens (-1: the model's limit). Default: over-long input is an error."""
    normalize: bool | None = None
    prompt_name: str | None = None
    """One of the model's prompts (GET /v1/models lists them), in front of every text."""
    input_type: str | None = None
    """Cohere's and Voyage's name for it: query / search_query, document / search_document /
    passage; the model's prompt of that kind, or nothing when the model has none."""
    long_inputs: Literal["error", "truncate", "chunk"] | None = None
    """An input over the model's length: refused, truncated, or embedded in overlapping chunks
    (their token-weighted mean). Default: the server's --long-inputs."""
    chunk_overlap: StrictInt | None = None
    """Tokens each chunk shares with the one before (default: an eighth of max_model_len)."""
    return_chunks: bool = False
    """With chunking: also return each chunk's vector and character span (data[i].chunks)."""
    return_sparse: bool = False
    """Also return each input's lexical weights (data[i].sparse_embedding: indices, values), from
    the same forward: models with a sparse head (SPLADE, bge-m3)."""
    return_multi_vector: bool = False
    """Also return each input's ColBERT vectors (data[i].multi_vector: one list of floats per token
    after the first, whatever encoding_format says), from the same forward: models with a
    multi-vector head (bge-m3)."""
    sparse_top_k: StrictInt | None = None
    """Sparse weights: keep the k largest."""
    sparse_threshold: float = 0.0
    """Sparse weights: keep those above this."""
    user: str | None = None


class PoolingRequest(EmbeddingRequest):
    input: Union[EmbeddingInput, list[tuple[StrictStr, StrictStr]]] = Field(  # type: ignore[assignment]
        description="as /v1/embeddings, or [text, text] pairs for a cross-encoder's classify and score tasks")
    task: Literal["embed", "token_embed", "classify", "score", "sparse", "multi_vector", "hybrid"] = "embed"
    """embed: one vector per input; token_embed: one vector per token; classify: class scores;
    score: a cross-encoder's score of each pair; sparse: lexical weights (SPLADE, bge-m3);
    multi_vector: ColBERT vectors (bge-m3); hybrid: dense, sparse and multi-vector from one forward.
    /v1/models lists the tasks of the model."""
    use_activation: bool | None = None


class ClassifyRequest(_Request):
    input: Union[StrictStr, list[StrictStr], list[list[StrictInt]]] = Field(description="texts to classify")
    truncate_prompt_tokens: StrictInt | None = None
    use_activation: bool | None = None
    """false: the logits instead of probabilities."""
    user: str | None = None


class ScoreRequest(_Request):
    """vLLM's /score: text_1 against text_2 (1:1, 1:N or N:N); `queries`/`documents` are accepted
    as the same two fields."""

    text_1: Union[StrictStr, list[StrictStr], None] = None
    text_2: Union[StrictStr, list[StrictStr], None] = None
    queries: Union[StrictStr, list[StrictStr], None] = None
    documents: Union[StrictStr, list[StrictStr], None] = None
    truncate_prompt_tokens: StrictInt | None = None
    use_activation: bool | None = None
    user: str | None = None

    def texts(self) -> tuple[Any, Any]:
        first = self.text_1 if self.text_1 is not None else self.queries
        second = self.text_2 if self.text_2 is not None else self.documents
        return first, second


class RerankDocument(BaseModel):
    text: StrictStr


class RerankRequest(_Request):
    """Jina's and Cohere's rerank (v1 and v2): a query, documents, the top_n best."""

    query: StrictStr
    documents: list[Union[StrictStr, RerankDocument]]
    top_n: StrictInt | None = None
    """The best top_n documents (None or 0: all)."""
    return_documents: bool | None = None
    """Include each document's text (default: true on /rerank and /v1/rerank, false on /v2/rerank)."""
    max_tokens_per_doc: StrictInt | None = None
    """Cohere: cut each document to this many tokens first."""
    truncate_prompt_tokens: StrictInt | None = None
    use_activation: bool | None = None

    def document_texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class TokenizeRequest(_Request):
    prompt: StrictStr
    return_token_strs: bool = False


class DetokenizeRequest(_Request):
    tokens: list[StrictInt]


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingChunkData(BaseModel):
    start: int
    """input[index][start:end] is the text of the chunk."""
    end: int
    tokens: int
    embedding: list[float] | str | None = None
    """With return_chunks."""


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str
    truncated: bool = False
    """The input was cut to the model's length."""
    chunks: list[EmbeddingChunkData] | None = None
    """The input was embedded in chunks (long_inputs="chunk"): their spans, and vectors with return_chunks."""


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


class SparseData(BaseModel):
    indices: list[int]
    """Vocabulary token ids, highest weight first."""
    values: list[float]
    tokens: list[str]
    """The token of each id (the tokenizer's vocabulary)."""


class PoolingData(BaseModel):
    object: Literal["pooling"] = "pooling"
    index: int
    data: list[float] | list[list[float]] | str | float | SparseData


class PoolingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[PoolingData]
    model: str
    usage: Usage


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeResponse(BaseModel):
    prompt: str


def encode_vector(vector: np.ndarray, encoding_format: str) -> np.ndarray | str:
    """float: the array itself (orjson writes it); base64: little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector
