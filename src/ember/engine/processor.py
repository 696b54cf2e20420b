"""Prompt validation and tokenization: everything a request needs before it is queued."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

from ember.config import ModelInfo
from ember.errors import InvalidRequestError
from ember.params import PoolingParams
from ember.tokenizer import Chunk, TextTokenizer, Tokenized

TextPair = tuple[str, str]
"""Two texts scored together by a cross-encoder (query, document)."""
PromptType = Union[str, Sequence[int], TextPair, dict]
PromptsType = Union[PromptType, Sequence[PromptType]]
Prompt = Union[str, list[int], TextPair]


def normalize_prompts(prompts: Any) -> list[Prompt]:
    """str | (a, b) | list of those | list[int] | list[list[int]] | {"prompt_token_ids": [...]} -> a list of prompts."""
    if prompts is None:
        raise InvalidRequestError("prompts must be a string, a list of strings or token-id lists; got None", param="input")
    if isinstance(prompts, (str, dict)) or _is_pair(prompts):
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


def _is_pair(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and all(isinstance(x, str) for x in value)


def _is_token_ids(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray)) and len(value) > 0 and all(
        isinstance(x, int) and not isinstance(x, bool) for x in value
    )


def _one_prompt(prompt: Any, index: int) -> Prompt:
    if isinstance(prompt, str):
        return checked_text(prompt, index)
    if _is_pair(prompt):
        return (checked_text(prompt[0], index), checked_text(prompt[1], index))
    if isinstance(prompt, dict):
        if "prompt_token_ids" in prompt:
            prompt = prompt["prompt_token_ids"]
        elif isinstance(prompt.get("prompt"), str):
            return checked_text(prompt["prompt"], index)
    if _is_token_ids(prompt):
        return list(prompt)
    if isinstance(prompt, Sequence) and not isinstance(prompt, str) and len(prompt) == 0:
        raise InvalidRequestError(f"prompt {index} is an empty token list", param="input")
    raise InvalidRequestError(
        f"prompt {index} must be a string, a (text, text) pair or a list of integer token ids; got "
        f"{type(prompt).__name__}: {prompt!r:.60}", param="input")


def checked_text(text: str, index: int, param: str = "input") -> str:
    """The text, if it is valid Unicode: a lone surrogate (valid JSON: "\\ud800") has no UTF-8
    form, and the tokenizer would fail on it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequestError(f"prompt {index} is not valid Unicode: {exc.reason} at character {exc.start} "
                                  f"({text[exc.start]!r})", param=param) from None
    return text


class InputProcessor:
    """Turns prompts into checked token ids for one model: every task's tokenization and
    validation happens here, before anything is queued. Thread-safe."""

    def __init__(self, tokenizer: TextTokenizer, info: ModelInfo, *, long_inputs: str = "error") -> None:
        self.tokenizer = tokenizer
        self.info = info
        self.long_inputs = long_inputs
        """What happens to an over-long input whose request does not say (params.LONG_INPUTS)."""

    def process(self, task: str, prompts: list[Prompt], params: PoolingParams) -> list[Tokenized]:
        """Token ids of pooling prompts: texts, token-id lists and (cross-encoders) text pairs."""
        limit = params.token_limit(self.info)
        mode = params.long_inputs or self.long_inputs
        if mode == "chunk" and task != "embed":
            mode = "truncate"  # the server's default: chunking is for vectors; scores and classes truncate
        if limit is None and mode == "truncate":
            limit = self.info.max_model_len
        chunking = limit is None and mode == "chunk"
        out: list[Tokenized | None] = [None] * len(prompts)
        prefix = params.prefix(self.info)
        texts = [(i, prefix + p) for i, p in enumerate(prompts) if isinstance(p, str)]
        if texts:
            encoded = self.tokenizer.encode_batch([p for _, p in texts], [limit] * len(texts), params.truncation_side)
            for (i, _), tok in zip(texts, encoded):
                too_long = len(tok.token_ids) > self.info.max_model_len
                out[i] = self._chunked(prompts[i], prefix, params, tok) if chunking and too_long else tok
        pairs = [(i, p) for i, p in enumerate(prompts) if isinstance(p, tuple)]
        if pairs:
            if not self.info.num_labels:
                raise InvalidRequestError(
                    f"prompt {pairs[0][0]} is a text pair, which only cross-encoders and classifiers read; model "
                    f"{self.info.architecture} embeds single texts (score pairs with the score task)", param="input")
            specials = self.tokenizer.num_pair_special_tokens
            if limit is not None and limit < specials:  # found by test_input_properties.py
                raise InvalidRequestError(f"truncate_prompt_tokens={limit} is shorter than the {specials} special tokens "
                                          "every text pair needs", param="truncate_prompt_tokens")
            for (i, _), tok in zip(pairs, self.tokenizer.encode_pairs([p for _, p in pairs], limit)):
                out[i] = tok
        for i, p in enumerate(prompts):
            if isinstance(p, list):
                out[i] = self._token_prompt(p, i, limit, params.truncation_side)
        for i, tok in enumerate(out):
            assert tok is not None
            if len(tok.token_ids) > self.info.max_model_len:
                raise InvalidRequestError(
                    f"prompt {i} has {len(tok.token_ids)} tokens, more than max_model_len={self.info.max_model_len}; "
                    "pass truncate_prompt_tokens=-1 (or a smaller limit) to truncate it, long_inputs='chunk' to embed "
                    "it in overlapping chunks (texts), or start the engine with long_inputs='truncate' or 'chunk' "
                    "(ember serve --long-inputs truncate|chunk) to do so by default",
                    param="input",
                )
        return out  # type: ignore[return-value]

    def _chunked(self, text: str, prefix: str, params: PoolingParams, whole: Tokenized) -> Tokenized:
        """An over-long text as overlapping windows of max_model_len tokens; spans index `text`.
        A prompt prefix goes in front of every window (each is embedded as a document of its own)."""
        limit = self.info.max_model_len
        room = limit - (len(self.tokenizer.encode_batch([prefix], [None])[0].token_ids) - self.tokenizer.num_special_tokens
                        if prefix else 0)
        overlap = params.overlap(self.info)
        if room - self.tokenizer.num_special_tokens <= overlap:
            raise InvalidRequestError(f"the prompt prefix leaves {room} tokens per chunk, too few for an overlap of "
                                      f"{overlap}", param="chunk_overlap")
        chunks = self.tokenizer.chunk(text, room, overlap)
        if prefix:
            encoded = self.tokenizer.encode_batch([prefix + text[c.start:c.end] for c in chunks], [limit] * len(chunks))
            chunks = [Chunk(tok.token_ids, c.start, c.end) for c, tok in zip(chunks, encoded)]
        return Tokenized([], False, whole.num_original_tokens, chunks=chunks)

    def generation_prompts(self, prompts: list[Prompt]) -> list[list[int]]:
        """Token ids of prompts to continue (no truncation: the context check needs max_tokens)."""
        texts = [p for p in prompts if isinstance(p, str)]
        encoded = iter(self.tokenizer.encode_batch(texts, [None] * len(texts)) if texts else [])
        out = []
        for i, prompt in enumerate(prompts):
            if isinstance(prompt, tuple):
                raise InvalidRequestError(f"prompt {i} is a text pair; generation continues one text", param="prompt")
            ids = next(encoded).token_ids if isinstance(prompt, str) else list(prompt)
            if not ids or prompt == "":
                raise InvalidRequestError(f"prompt {i} is empty", param="prompt")
            self._check_vocab(ids, i, "prompt")
            out.append(ids)
        return out

    def _check_vocab(self, ids: list[int], index: int, param: str) -> None:
        vocab = self.info.vocab_size
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise InvalidRequestError(f"prompt {index} has token id {bad} outside the vocabulary [0, {vocab})",
                                      param=param)

    def _token_prompt(self, ids: list[int], index: int, limit: int | None, side: str) -> Tokenized:
        self._check_vocab(ids, index, "input")
        if limit is not None and len(ids) > limit:
            kept = ids[:limit] if side == "right" else ids[-limit:]
            return Tokenized(kept, True, len(ids))
        return Tokenized(ids, False, len(ids))
