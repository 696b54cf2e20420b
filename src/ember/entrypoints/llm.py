"""Offline API: LLM(model).embed / classify / score / rerank / encode / generate, vLLM-compatible.
The engine runs in this process; every method goes through Engine.make_requests and Engine.run."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from ember.config import EngineConfig, ModelInfo
from ember.engine.engine import Engine
from ember.engine.processor import PromptsType
from ember.engine.request import Request, chunks_of
from ember.engine.scoring import check_top_n, pair_up, plan_scores, rank
from ember.errors import InvalidRequestError
from ember.outputs import (
    ClassificationOutput,
    ClassificationRequestOutput,
    CompilationTimes,
    EmbeddingOutput,
    EmbeddingRequestOutput,
    HybridEmbedding,
    HybridRequestOutput,
    RequestOutput,
    RerankOutput,
    ScoringOutput,
    ScoringRequestOutput,
    SparseEmbedding,
    SparseRequestOutput,
)
from ember.params import PoolingParams, SamplingParams

_PROGRESS_NAMES = {"embed": "Embedding", "token_embed": "Embedding", "classify": "Classifying", "score": "Scoring",
                   "generate": "Generating"}


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

    @classmethod
    def from_config(cls, config: EngineConfig) -> LLM:
        llm = cls.__new__(cls)
        llm.config, llm.engine = config, Engine(config)
        return llm

    @property
    def model_info(self) -> ModelInfo:
        return self.engine.info

    @property
    def compilation_times(self) -> CompilationTimes:
        return self.engine.worker.report.compilation_times

    def stats(self) -> dict[str, Any]:
        """Startup and runtime counters, including compiles_after_ready (always 0)."""
        return self.engine.stats()

    def embed(self, prompts: PromptsType, *, pooling_params: PoolingParams | None = None,
              truncate_prompt_tokens: int | None = None, prompt_name: str | None = None,
              use_tqdm: bool = False) -> list[EmbeddingRequestOutput]:
        """One pooled vector per prompt, in input order. prompt_name: one of the model's prompts
        (config_sentence_transformers.json) in front of every text; None: the default prompt."""
        if prompt_name is not None:
            pooling_params = dataclasses.replace(pooling_params or PoolingParams(), prompt_name=prompt_name)
        return self.encode(prompts, pooling_task="embed", pooling_params=pooling_params,
                           truncate_prompt_tokens=truncate_prompt_tokens, use_tqdm=use_tqdm)

    def encode(self, prompts: PromptsType, *, pooling_task: str = "embed", pooling_params: PoolingParams | None = None,
               truncate_prompt_tokens: int | None = None, use_tqdm: bool = False) -> list[Any]:
        """Pooled outputs for any pooling task: "embed" (one vector), "token_embed" (one per
        token), "classify" (class scores), "score" (a cross-encoder's score of each text pair) or
        "sparse" (lexical weights: pooling_params' sparse_top_k / sparse_threshold), "multi_vector"
        (ColBERT vectors, one per token after the first) or "hybrid" (the dense vector, the sparse
        weights and the multi-vector from one forward: bge-m3)."""
        params = _merge_params(pooling_params, truncate_prompt_tokens)
        requests = self._run(pooling_task, prompts, params, use_tqdm)
        if pooling_task == "classify":
            return [self._classification(r) for r in requests]
        if pooling_task == "score":
            return [ScoringRequestOutput(r.request_id, ScoringOutput(float(r.output)), r.prompt_token_ids)
                    for r in requests]
        if pooling_task == "sparse":
            return [SparseRequestOutput(r.request_id, SparseEmbedding.from_weights(
                r.output.numpy(), params.sparse_top_k, params.sparse_threshold), r.prompt_token_ids, r.truncated)
                for r in requests]
        if pooling_task == "hybrid":
            return [HybridRequestOutput(r.request_id, hybrid_embedding(r.output, params), r.prompt_token_ids,
                                        r.truncated) for r in requests]
        return [EmbeddingRequestOutput(r.request_id, EmbeddingOutput(r.output.numpy()), r.prompt_token_ids,
                                       r.truncated, chunks=chunks_of(r)) for r in requests]

    def classify(self, prompts: PromptsType, *, use_activation: bool | None = None,
                 truncate_prompt_tokens: int | None = None, use_tqdm: bool = False) -> list[ClassificationRequestOutput]:
        """Class scores per prompt (a text, or a (text, text) pair for pair classifiers), in input
        order: probabilities (softmax, or sigmoid for one label and multi-label models), or the
        logits with use_activation=False."""
        params = PoolingParams(truncate_prompt_tokens=truncate_prompt_tokens, use_activation=use_activation)
        return self.encode(prompts, pooling_task="classify", pooling_params=params, use_tqdm=use_tqdm)

    def score(self, text_1: str | Sequence[str], text_2: str | Sequence[str], *, use_activation: bool | None = None,
              truncate_prompt_tokens: int | None = None, use_tqdm: bool = False) -> list[ScoringRequestOutput]:
        """Relevance of text pairs (1:1, 1:N: one text_1 for many text_2, or N:N), in pair order: a
        cross-encoder's score, or the cosine of an embedding model's vectors."""
        params = PoolingParams(truncate_prompt_tokens=truncate_prompt_tokens, use_activation=use_activation)
        plan = plan_scores(self.engine.info, pair_up(text_1, text_2), params)
        requests = self._run(plan.task, plan.prompts, plan.params, use_tqdm)
        scores = plan.scores([r.output for r in requests])
        if plan.task == "score":
            return [ScoringRequestOutput(r.request_id, ScoringOutput(s), r.prompt_token_ids)
                    for r, s in zip(requests, scores)]
        return [ScoringRequestOutput(f"score-{i}", ScoringOutput(s),
                                     requests[a].prompt_token_ids + requests[b].prompt_token_ids)
                for i, ((a, b), s) in enumerate(zip(plan.pair_rows, scores))]

    def rerank(self, query: str, documents: Sequence[str], *, top_n: int | None = None,
               use_activation: bool | None = None, truncate_prompt_tokens: int | None = None) -> RerankOutput:
        """`documents` by decreasing relevance to `query` (the first top_n; None or 0: all)."""
        if not isinstance(documents, (list, tuple)) or not documents:
            raise InvalidRequestError("documents must be a non-empty list of strings", param="documents")
        params = PoolingParams(truncate_prompt_tokens=truncate_prompt_tokens, use_activation=use_activation)
        plan = plan_scores(self.engine.info, pair_up(query, list(documents)), params)
        check_top_n(top_n)  # before the model runs
        requests = self._run(plan.task, plan.prompts, plan.params, False)
        results = rank(list(documents), plan.scores([r.output for r in requests]), top_n)
        return RerankOutput(results, sum(r.num_tokens for r in requests))

    def generate(self, prompts: PromptsType, sampling_params: SamplingParams | list[SamplingParams] | None = None, *,
                 use_tqdm: bool = False) -> list[RequestOutput]:
        """Continuations of the prompts (decoder models), in input order, batched continuously."""
        from ember.engine.generation import to_output

        return [to_output(s) for s in self._run("generate", prompts, sampling_params, use_tqdm)]  # type: ignore[arg-type]

    def _run(self, task: str, prompts: Any, params: Any, use_tqdm: bool) -> list[Request]:
        requests = self.engine.make_requests(task, prompts, params)
        # A tqdm, even disabled, costs its first call a lock, an import and a thread: only on request.
        bar = tqdm(total=len(requests), desc=_PROGRESS_NAMES.get(task, task), unit="prompt") if use_tqdm else None
        self.engine.run(requests, on_step=(lambda done: bar.update(len(done))) if bar is not None else None)
        if bar is not None:
            bar.close()
        return requests

    def _classification(self, r: Request) -> ClassificationRequestOutput:
        probs = r.output.tolist()
        label = self.engine.info.labels[max(range(len(probs)), key=probs.__getitem__)]
        return ClassificationRequestOutput(r.request_id, ClassificationOutput(probs), r.prompt_token_ids, label,
                                           getattr(r, "truncated", False))


def hybrid_embedding(output: dict[str, Any], params: PoolingParams) -> HybridEmbedding:
    """A hybrid row's tensors (model/pooler.py: row_outputs) as the caller's arrays."""
    sparse, multi = output["sparse"], output["multi_vector"]
    return HybridEmbedding(output["dense"].numpy(),
                           None if sparse is None else SparseEmbedding.from_weights(
                               sparse.numpy(), params.sparse_top_k, params.sparse_threshold),
                           None if multi is None else multi.numpy())


def _merge_params(params: PoolingParams | None, truncate_prompt_tokens: int | None) -> PoolingParams:
    if params is None:
        params = PoolingParams()
    elif not isinstance(params, PoolingParams):
        raise InvalidRequestError(f"pooling_params must be a PoolingParams, got {type(params).__name__}",
                                  param="pooling_params")
    if truncate_prompt_tokens is not None:
        params = dataclasses.replace(params, truncate_prompt_tokens=truncate_prompt_tokens)
    return params
