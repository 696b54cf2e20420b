"""Offline API: LLM(model).embed(prompts), vLLM-compatible. The engine runs in this process."""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

from ember.config import EngineConfig, ModelInfo
from ember.engine.engine import Engine
from ember.engine.processor import PromptsType, normalize_prompts
from ember.errors import InvalidRequestError
from ember.outputs import (
    CompilationTimes,
    EmbeddingOutput,
    EmbeddingRequestOutput,
    RequestOutput,
)
from ember.params import PoolingParams, SamplingParams


class LLM:
    """An engine for one model. Construction runs the whole startup: when it returns, every shape
    is compiled and warmed and the random generators are freshly seeded.

    Args:
        model: a model folder or a known installed name (default: all-MiniLM-L6-v2).
        dtype: "auto" (bf16 where it is faster on this CPU, else fp32), "float32" or "bfloat16".
        seed: seed of python, numpy and torch generators, applied after warm-up.
        **kwargs: any EngineConfig field (max_model_len, max_num_seqs, enforce_eager, ...).
    """

    def __init__(self, model: str | None = None, *, dtype: str = "auto", seed: int = 0, **kwargs: Any) -> None:
        self.config = EngineConfig.from_kwargs(model, dtype=dtype, seed=seed, **kwargs)
        self.engine = Engine(self.config)

    @property
    def model_info(self) -> ModelInfo:
        return self.engine.info

    @property
    def compilation_times(self) -> CompilationTimes:
        return self.engine.worker.report.compilation_times

    def stats(self) -> dict[str, Any]:
        """Startup and runtime counters, including compiles_after_ready (always 0)."""
        return self.engine.stats()

    def embed(
        self,
        prompts: PromptsType,
        *,
        pooling_params: PoolingParams | None = None,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = False,
    ) -> list[EmbeddingRequestOutput]:
        """One pooled vector per prompt, in input order."""
        return self.encode(prompts, pooling_task="embed", pooling_params=pooling_params,
                           truncate_prompt_tokens=truncate_prompt_tokens, use_tqdm=use_tqdm)

    def encode(
        self,
        prompts: PromptsType,
        *,
        pooling_task: str = "embed",
        pooling_params: PoolingParams | None = None,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = False,
    ) -> list[EmbeddingRequestOutput]:
        """Pooled outputs; pooling_task "embed" (one vector) or "token_embed" (one per token)."""
        params = _merge_params(pooling_params, truncate_prompt_tokens)
        params.verify(pooling_task, self.engine.info)
        tokenized = self.engine.processor.process(normalize_prompts(prompts), params)
        requests = self.engine.make_requests(tokenized, params, pooling_task)
        for request in sorted(requests, key=lambda r: r.num_tokens):
            self.engine.add_request(request)
        # A tqdm, even disabled, costs its first call a lock, an import and a thread: only on request.
        bar = tqdm(total=len(requests), desc="Embedding", unit="prompt") if use_tqdm else None
        while self.engine.has_unfinished_requests():
            finished = self.engine.step()
            if bar is not None:
                bar.update(len(finished))
        if bar is not None:
            bar.close()
        return [
            EmbeddingRequestOutput(r.request_id, EmbeddingOutput(r.output.numpy()), r.prompt_token_ids, r.truncated)
            for r in requests
        ]

    def generate(
        self,
        prompts: PromptsType,
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
        *,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        """Continuations of the prompts (decoder models), in input order, batched continuously."""
        generation = self.engine.generation
        if generation is None:
            raise InvalidRequestError(f"model {self.engine.info.architecture} does not generate text; use embed",
                                      param="model")
        prompt_list = normalize_prompts(prompts)
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params or SamplingParams()] * len(prompt_list)
        if len(params) != len(prompt_list):
            raise InvalidRequestError(f"got {len(params)} sampling_params for {len(prompt_list)} prompts",
                                      param="sampling_params")
        return generation.generate(prompt_list, params)


def _merge_params(params: PoolingParams | None, truncate_prompt_tokens: int | None) -> PoolingParams:
    if params is None:
        params = PoolingParams()
    elif not isinstance(params, PoolingParams):
        raise InvalidRequestError(f"pooling_params must be a PoolingParams, got {type(params).__name__}",
                                  param="pooling_params")
    if truncate_prompt_tokens is not None:
        params = PoolingParams(params.normalize, params.dimensions, truncate_prompt_tokens, params.truncation_side)
    return params
