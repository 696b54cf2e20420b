"""Per-request parameters, validated against the model they run on (vLLM style)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ember.config import ModelInfo
from ember.errors import InvalidRequestError

PoolingTask = Literal["embed", "token_embed"]
POOLING_TASKS: tuple[str, ...] = ("embed", "token_embed")


@dataclass(slots=True)
class PoolingParams:
    """How one request's hidden states become its output.

    Attributes:
        normalize: L2-normalize the vector. None: the model's default.
        dimensions: matryoshka truncation (truncate, then renormalize if normalizing).
        truncate_prompt_tokens: keep at most this many tokens (special tokens included);
            -1 means the model's max length. None: over-long prompts are an error.
        truncation_side: which end is cut when truncating.
    """

    normalize: bool | None = None
    dimensions: int | None = None
    truncate_prompt_tokens: int | None = None
    truncation_side: Literal["right", "left"] = "right"

    def verify(self, task: str, info: ModelInfo) -> None:
        """Raise InvalidRequestError naming the field when this request cannot run."""
        if task not in POOLING_TASKS:
            raise InvalidRequestError(
                f"pooling_task must be one of {', '.join(POOLING_TASKS)}; got {task!r}", param="pooling_task"
            )
        if self.normalize is not None and not isinstance(self.normalize, bool):
            raise InvalidRequestError(f"normalize must be a boolean, got {self.normalize!r}", param="normalize")
        if self.truncation_side not in ("right", "left"):
            raise InvalidRequestError(
                f"truncation_side must be 'right' or 'left', got {self.truncation_side!r}", param="truncation_side"
            )
        self._verify_dimensions(task, info)
        self._verify_truncation(info)

    def _verify_dimensions(self, task: str, info: ModelInfo) -> None:
        dims = self.dimensions
        if dims is None:
            return
        full = info.embedding_dimension or info.hidden_size
        if task != "embed":
            raise InvalidRequestError("dimensions is only supported for the embed task", param="dimensions")
        if not isinstance(dims, int) or isinstance(dims, bool) or dims < 1:
            raise InvalidRequestError(f"dimensions must be a positive integer, got {dims!r}", param="dimensions")
        if not info.is_matryoshka:
            raise InvalidRequestError(
                f"model {info.architecture} does not support matryoshka dimensions", param="dimensions"
            )
        allowed = info.matryoshka_dimensions
        if allowed is not None and dims not in allowed:
            raise InvalidRequestError(
                f"dimensions={dims} is not supported by this model; allowed: {list(allowed)}", param="dimensions"
            )
        if dims > full:
            raise InvalidRequestError(
                f"dimensions={dims} is larger than the model's embedding size {full}", param="dimensions"
            )

    def _verify_truncation(self, info: ModelInfo) -> None:
        t = self.truncate_prompt_tokens
        if t is None or t == -1:
            return
        if not isinstance(t, int) or isinstance(t, bool) or t < 1:
            raise InvalidRequestError(
                f"truncate_prompt_tokens must be -1 or a positive integer, got {t!r}", param="truncate_prompt_tokens"
            )
        if t > info.max_model_len:
            raise InvalidRequestError(
                f"truncate_prompt_tokens={t} is larger than the model's max_model_len {info.max_model_len}",
                param="truncate_prompt_tokens",
            )

    def token_limit(self, info: ModelInfo) -> int | None:
        """Tokens to keep, or None when over-long prompts must be rejected."""
        t = self.truncate_prompt_tokens
        if t is None:
            return None
        return info.max_model_len if t == -1 else t
