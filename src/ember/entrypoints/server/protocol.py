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

MAX_INPUT_ITEMS = 2048
"""Most prompts in one request (OpenAI's limit)."""

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
    user: str | None = None


class PoolingRequest(EmbeddingRequest):
    task: Literal["embed", "token_embed"] = "embed"
    """embed: one vector per input; token_embed: one vector per token."""


class TokenizeRequest(_Request):
    prompt: StrictStr
    return_token_strs: bool = False


class DetokenizeRequest(_Request):
    tokens: list[StrictInt]


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


class PoolingData(BaseModel):
    object: Literal["pooling"] = "pooling"
    index: int
    data: list[float] | list[list[float]] | str


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
