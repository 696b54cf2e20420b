"""Prompt validation and tokenization: everything a request needs before it is queued."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

from ember.config import ModelInfo
from ember.errors import InvalidRequestError
from ember.params import PoolingParams
from ember.tokenizer import TextTokenizer, Tokenized

PromptType = Union[str, Sequence[int], dict]
PromptsType = Union[PromptType, Sequence[PromptType]]


def normalize_prompts(prompts: Any) -> list[str | list[int]]:
    """str | list[str] | list[int] | list[list[int]] | {"prompt_token_ids": [...]} -> a list of prompts."""
    if prompts is None:
        raise InvalidRequestError("prompts must be a string, a list of strings or token-id lists; got None", param="input")
    if isinstance(prompts, (str, dict)):
        prompts = [prompts]
    elif _is_token_ids(prompts):
        prompts = [list(prompts)]
    if not isinstance(prompts, Sequence) or isinstance(prompts, (bytes, bytearray)):
        raise InvalidRequestError(
            f"prompts must be a string, a list of strings or token-id lists; got {type(prompts).__name__}", param="input"
        )
    if len(prompts) == 0:
        raise InvalidRequestError("prompts must not be empty", param="input")
    return [_one_prompt(p, i) for i, p in enumerate(prompts)]


def _is_token_ids(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray)) and len(value) > 0 and all(
        isinstance(x, int) and not isinstance(x, bool) for x in value
    )


def _one_prompt(prompt: Any, index: int) -> str | list[int]:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, dict):
        if "prompt_token_ids" in prompt:
            prompt = prompt["prompt_token_ids"]
        elif isinstance(prompt.get("prompt"), str):
            return prompt["prompt"]
    if _is_token_ids(prompt):
        return list(prompt)
    if isinstance(prompt, Sequence) and not isinstance(prompt, str) and len(prompt) == 0:
        raise InvalidRequestError(f"prompt {index} is an empty token list", param="input")
    raise InvalidRequestError(
        f"prompt {index} must be a string or a list of integer token ids; got {type(prompt).__name__}: {prompt!r:.60}",
        param="input",
    )


class InputProcessor:
    """Turns prompts into checked token ids for one model. Thread-safe."""

    def __init__(self, tokenizer: TextTokenizer, info: ModelInfo) -> None:
        self.tokenizer = tokenizer
        self.info = info

    def process(self, prompts: list[str | list[int]], params: PoolingParams) -> list[Tokenized]:
        limit = params.token_limit(self.info)
        texts = [(i, p) for i, p in enumerate(prompts) if isinstance(p, str)]
        out: list[Tokenized | None] = [None] * len(prompts)
        if texts:
            encoded = self.tokenizer.encode_batch([p for _, p in texts], [limit] * len(texts), params.truncation_side)
            for (i, _), tok in zip(texts, encoded):
                out[i] = tok
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                out[i] = self._token_prompt(p, i, limit, params.truncation_side)
        for i, tok in enumerate(out):
            assert tok is not None
            if len(tok.token_ids) > self.info.max_model_len:
                raise InvalidRequestError(
                    f"prompt {i} has {len(tok.token_ids)} tokens, more than max_model_len={self.info.max_model_len}; "
                    "pass truncate_prompt_tokens=-1 (or a smaller limit) to truncate it",
                    param="input",
                )
        return out  # type: ignore[return-value]

    def _token_prompt(self, ids: list[int], index: int, limit: int | None, side: str) -> Tokenized:
        vocab = self.tokenizer.vocab_size
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise InvalidRequestError(f"prompt {index} has token id {bad} outside the vocabulary [0, {vocab})", param="input")
        if limit is not None and len(ids) > limit:
            kept = ids[:limit] if side == "right" else ids[-limit:]
            return Tokenized(kept, True, len(ids))
        return Tokenized(ids, False, len(ids))
