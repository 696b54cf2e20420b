"""Per-request parameters, validated against the model they run on (vLLM style)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ember.config import ModelInfo
from ember.errors import InvalidRequestError

PoolingTask = Literal["embed", "token_embed", "classify", "score", "sparse", "multi_vector", "hybrid"]
POOLING_TASKS: tuple[str, ...] = ("embed", "token_embed", "classify", "score", "sparse", "multi_vector", "hybrid")
LONG_INPUTS: tuple[str, ...] = ("error", "truncate", "chunk")
GREEDY_BELOW = 1e-5
"""A temperature below this samples greedily (as vLLM does): logits divided by a subnormal one
(1.4e-45 is valid JSON and a valid float32) overflow to inf and the probabilities to nan."""
"""What happens to an input over max_model_len (PoolingParams.long_inputs, --long-inputs)."""
"""embed: one vector per prompt; token_embed: one vector per token; classify: one probability (or
logit) per label; score: one relevance score per text pair (cross-encoders, num_labels=1);
sparse: lexical weights per vocabulary token (SPLADE's masked-LM head, bge-m3's sparse_linear);
multi_vector: ColBERT vectors per token (bge-m3's colbert_linear); hybrid: the dense vector with
the sparse weights and the multi-vector, from one forward (bge-m3's three outputs)."""


@dataclass(slots=True)
class PoolingParams:
    """How one request's hidden states become its output.

    Attributes:
        normalize: L2-normalize the vector. None: the model's default.
        dimensions: matryoshka truncation (truncate, then renormalize if normalizing).
        truncate_prompt_tokens: keep at most this many tokens (special tokens included);
            -1 means the model's max length. None: over-long prompts are an error.
        truncation_side: which end is cut when truncating (a pair: "longest_first", as transformers).
        use_activation: classify/score: apply the model's activation (sigmoid for one label or
            multi-label, softmax otherwise) to the logits. None: True.
        prompt_name: one of the model's prompts (config_sentence_transformers.json), put in front
            of every text, as sentence-transformers does. None: the default prompt, if any.
        prompt: a prefix given literally (instead of prompt_name).
        long_inputs: what happens to a text over the model's length when truncate_prompt_tokens is
            not given: "error", "truncate" (keep the first tokens) or "chunk" (embed: windows of
            max_model_len tokens that overlap by chunk_overlap, embedded in the same batches; the
            output is their token-weighted mean). None: the engine's default (--long-inputs).
        chunk_overlap: tokens each chunk shares with the one before. None: an eighth of a chunk.
        return_chunks: chunk mode: also return every chunk's vector and character span.
        sparse_top_k: the sparse and hybrid tasks: keep the k largest weights (None: every weight
            above the threshold).
        sparse_threshold: the sparse and hybrid tasks: keep weights above this.
    """

    normalize: bool | None = None
    dimensions: int | None = None
    truncate_prompt_tokens: int | None = None
    truncation_side: Literal["right", "left"] = "right"
    use_activation: bool | None = None
    prompt_name: str | None = None
    prompt: str | None = None
    long_inputs: Literal["error", "truncate", "chunk"] | None = None
    chunk_overlap: int | None = None
    return_chunks: bool = False
    sparse_top_k: int | None = None
    sparse_threshold: float = 0.0

    def prefix(self, info: ModelInfo) -> str:
        """What goes in front of every text: `prompt`, else the named prompt, else the default's."""
        if self.prompt is not None:
            return self.prompt
        name = self.prompt_name or info.default_prompt_name
        return info.prompts.get(name, "") if name else ""

    def verify(self, task: str, info: ModelInfo) -> None:
        """Raise InvalidRequestError naming the field when this request cannot run."""
        if task not in POOLING_TASKS:
            raise InvalidRequestError(
                f"pooling_task must be one of {', '.join(POOLING_TASKS)}; got {task!r}", param="pooling_task"
            )
        info.check_task(task)
        if self.normalize is not None and not isinstance(self.normalize, bool):
            raise InvalidRequestError(f"normalize must be a boolean, got {self.normalize!r}", param="normalize")
        if self.normalize is not None and task in ("classify", "score") and info.num_labels:
            raise InvalidRequestError(f"normalize applies to vectors, not to the {task} task", param="normalize")
        if self.use_activation is not None and not isinstance(self.use_activation, bool):
            raise InvalidRequestError(f"use_activation must be a boolean, got {self.use_activation!r}",
                                      param="use_activation")
        if self.truncation_side not in ("right", "left"):
            raise InvalidRequestError(
                f"truncation_side must be 'right' or 'left', got {self.truncation_side!r}", param="truncation_side"
            )
        if self.prompt_name is not None and self.prompt is not None:
            raise InvalidRequestError("give prompt_name or prompt, not both", param="prompt")
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise InvalidRequestError(f"prompt must be a string, got {self.prompt!r}", param="prompt")
        if self.prompt_name is not None and self.prompt_name not in info.prompts:
            raise InvalidRequestError(f"prompt_name {self.prompt_name!r} is not one of this model's prompts: "
                                      f"{sorted(info.prompts) or 'none'}", param="prompt_name")
        self._verify_dimensions(task, info)
        self._verify_truncation(info)
        self._verify_chunking(task, info)
        self._verify_sparse(task)

    def _verify_sparse(self, task: str) -> None:
        k, threshold = self.sparse_top_k, self.sparse_threshold
        if (k is not None or threshold != 0.0) and task not in ("sparse", "hybrid"):
            raise InvalidRequestError(f"sparse_top_k and sparse_threshold apply to the sparse task, not {task}",
                                      param="sparse_top_k" if k is not None else "sparse_threshold")
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
            raise InvalidRequestError(f"sparse_top_k must be a positive integer, got {k!r}", param="sparse_top_k")
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not threshold >= 0:
            raise InvalidRequestError(f"sparse_threshold must be a number >= 0, got {threshold!r}",
                                      param="sparse_threshold")

    def _verify_chunking(self, task: str, info: ModelInfo) -> None:
        if self.long_inputs not in (None, *LONG_INPUTS):
            raise InvalidRequestError(f"long_inputs must be one of {', '.join(LONG_INPUTS)}, got {self.long_inputs!r}",
                                      param="long_inputs")
        if self.long_inputs == "chunk" and task != "embed":
            raise InvalidRequestError(f"long_inputs='chunk' applies to the embed task, not {task}", param="long_inputs")
        if not isinstance(self.return_chunks, bool):
            raise InvalidRequestError(f"return_chunks must be a boolean, got {self.return_chunks!r}",
                                      param="return_chunks")
        overlap = self.chunk_overlap
        if overlap is not None:
            if not isinstance(overlap, int) or isinstance(overlap, bool) or overlap < 0:
                raise InvalidRequestError(f"chunk_overlap must be a non-negative integer, got {overlap!r}",
                                          param="chunk_overlap")
            if overlap >= info.max_model_len // 2:
                raise InvalidRequestError(f"chunk_overlap={overlap} must be below half of max_model_len "
                                          f"({info.max_model_len})", param="chunk_overlap")

    def overlap(self, info: ModelInfo) -> int:
        """Tokens each chunk shares with the one before."""
        return info.max_model_len // 8 if self.chunk_overlap is None else self.chunk_overlap

    def _verify_dimensions(self, task: str, info: ModelInfo) -> None:
        dims = self.dimensions
        if dims is None:
            return
        full = info.embedding_dimension or info.hidden_size
        if task not in ("embed", "hybrid"):
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


@dataclass(slots=True)
class SamplingParams:
    """How one prompt's continuation is generated (vLLM names and defaults).

    Attributes:
        max_tokens: most tokens to generate. None: up to max_model_len.
        temperature: 0 (or below GREEDY_BELOW) is greedy; higher flattens the distribution.
        top_p: nucleus sampling: keep the smallest set of tokens whose probability reaches top_p.
        top_k: keep the k most likely tokens; 0 or -1 keeps all.
        min_tokens: tokens to generate before EOS or stop ids may end the sequence.
        stop: strings that end generation; the stop string is not returned.
        stop_token_ids: token ids that end generation (besides EOS).
        ignore_eos: keep generating past EOS.
        seed: a private random generator for this request, so that its output does not depend
            on what else is batched. None: the engine's generator, seeded after warm-up.
        skip_special_tokens: drop special tokens from the returned text.
    """

    max_tokens: int | None = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_tokens: int = 0
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    seed: int | None = None
    skip_special_tokens: bool = True

    @property
    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def is_greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    def verify(self, info: ModelInfo) -> None:
        """Raise InvalidRequestError naming the field when this request cannot run on `info`."""
        if not info.has_kv_cache:
            raise InvalidRequestError(f"model {info.architecture} does not generate text", param="model")
        _number("temperature", self.temperature, 0.0, 100.0)
        _number("top_p", self.top_p, 0.0, 1.0, low_open=True)
        if not _is_int(self.top_k) or self.top_k < -1:
            raise InvalidRequestError(f"top_k must be -1, 0 or a positive integer, got {self.top_k!r}", param="top_k")
        if self.max_tokens is not None and (not _is_int(self.max_tokens) or self.max_tokens < 1):
            raise InvalidRequestError(f"max_tokens must be a positive integer, got {self.max_tokens!r}",
                                      param="max_tokens")
        if not _is_int(self.min_tokens) or self.min_tokens < 0:
            raise InvalidRequestError(f"min_tokens must be >= 0, got {self.min_tokens!r}", param="min_tokens")
        if self.seed is not None and not _is_int(self.seed):
            raise InvalidRequestError(f"seed must be an integer, got {self.seed!r}", param="seed")
        if any(not isinstance(s, str) or not s for s in self.stop_strings):
            raise InvalidRequestError(f"stop must be a non-empty string or a list of them, got {self.stop!r}",
                                      param="stop")
        if any(not _is_int(t) for t in self.stop_token_ids or []):
            raise InvalidRequestError(f"stop_token_ids must be integers, got {self.stop_token_ids!r}",
                                      param="stop_token_ids")

    def tokens_to_generate(self, prompt_len: int, info: ModelInfo) -> int:
        """max_tokens for a prompt of prompt_len tokens, or InvalidRequestError when it cannot fit."""
        room = info.max_model_len - prompt_len
        wanted = room if self.max_tokens is None else self.max_tokens
        if room < 1 or wanted > room:
            raise InvalidRequestError(
                f"this model's maximum context length is {info.max_model_len} tokens; the prompt has "
                f"{prompt_len} tokens and max_tokens is {wanted}: lower max_tokens or shorten the prompt",
                param="max_tokens" if room >= 1 else "prompt",
            )
        return wanted


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(name: str, value: object, low: float, high: float, *, low_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    if ok and (low < value <= high if low_open else low <= value <= high):  # type: ignore[operator]
        return
    bound = "(" if low_open else "["
    raise InvalidRequestError(f"{name} must be in {bound}{low}, {high}], got {value!r}", param=name)
