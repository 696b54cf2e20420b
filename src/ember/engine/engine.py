"""Engine: the synchronous core, one request path for every task.

    make_requests(task, prompts, params)   validate + tokenize (InputProcessor): nothing is queued yet
    add_request(request)                   queue it: pooling tasks batch by tokens, generate steps a KV cache
    step()                                 schedule, execute, finish: returns the finished requests

The offline API (entrypoints/llm.py) calls run(); the server's engine thread (engine_loop.py)
calls add_request/step. Both make their requests with make_requests.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

from ember.config import EngineConfig
from ember.engine.generation import GenerationEngine
from ember.engine.processor import InputProcessor, normalize_prompts
from ember.engine.request import ChunkedRequest, PoolingRequest, Request
from ember.engine.scheduler import Scheduler
from ember.errors import BatchFailedError, InvalidRequestError
from ember.model.pooler import RowSpec, mean_of_chunks
from ember.params import PoolingParams, SamplingParams
from ember.runner.batch import Batch
from ember.runner.worker import Worker

logger = logging.getLogger(__name__)


class Engine:
    """Owns the worker (and so the model) and the schedulers. Not thread-safe: one caller steps it
    (make_requests is thread-safe: the server runs it in its tokenization pool)."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.worker = Worker(config)
        self.runner = self.worker.start()
        self.info = self.runner.info
        self.processor = InputProcessor(self.runner.tokenizer, self.info, long_inputs=config.model_config.long_inputs)
        self.scheduler = Scheduler(config.scheduler_config, self.runner.plan.max_tokens)
        self.generation = GenerationEngine(self.runner, config) if self.info.has_kv_cache else None  # type: ignore[arg-type]
        self._ids = itertools.count()
        self.num_batches = 0
        self.num_requests = 0

    def make_requests(self, task: str, prompts: Any, params: PoolingParams | SamplingParams | list[SamplingParams]
                      ) -> list[Request]:
        """Validated, tokenized requests for `task` (a pooling task or "generate"); raises
        InvalidRequestError, naming the field, before anything is queued."""
        if task == "generate":
            self.info.check_task(task)
            return self._sequences(normalize_prompts(prompts), params)
        if not isinstance(params, PoolingParams):
            raise InvalidRequestError(f"pooling_params must be a PoolingParams, got {type(params).__name__}",
                                      param="pooling_params")
        params.verify(task, self.info)
        if task == "score" and not self.info.num_labels:
            raise InvalidRequestError(f"model {self.info.architecture} scores text pairs by the cosine of their "
                                      "embeddings: use LLM.score / POST /score (the score task runs a "
                                      "cross-encoder's head)", param="task")
        tokenized = self.processor.process(task, normalize_prompts(prompts), params)
        shaping = {"dimensions": params.dimensions, "use_activation": params.use_activation is not False,
                   "normalize": self.info.normalize if params.normalize is None else params.normalize}
        requests: list[Request] = []
        for tok in tokenized:
            if tok.chunks is None:
                requests.append(PoolingRequest(str(next(self._ids)), tok.token_ids, task, token_type_ids=tok.token_type_ids,
                                               truncated=tok.truncated, **shaping))
                continue
            chunks = [PoolingRequest(str(next(self._ids)), c.token_ids, task, **shaping) for c in tok.chunks]
            requests.append(ChunkedRequest(str(next(self._ids)), [], task, chunks=chunks,
                                           spans=[(c.start, c.end) for c in tok.chunks], combine=mean_of_chunks,
                                           return_chunks=params.return_chunks, **shaping))
        return requests

    def _sequences(self, prompts: list[Any], params: Any) -> list[Request]:
        assert self.generation is not None  # check_task("generate") passed
        if not isinstance(params, list):
            params = [params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise InvalidRequestError(f"got {len(params)} sampling_params for {len(prompts)} prompts",
                                      param="sampling_params")
        return self.generation.make_sequences(prompts, self.processor.generation_prompts(prompts), params)

    def add_request(self, request: Request) -> None:
        if request.task == "generate":
            assert self.generation is not None
            self.generation.add(request)  # type: ignore[arg-type]
        elif isinstance(request, ChunkedRequest):
            for chunk in request.prepare():
                self.scheduler.add(chunk)
        else:
            self.scheduler.add(request)  # type: ignore[arg-type]

    def has_unfinished_requests(self) -> bool:
        generating = self.generation is not None and self.generation.has_unfinished_requests()
        return self.scheduler.has_unfinished_requests() or generating

    def run(self, requests: list[Request], on_step: Any = None) -> list[Request]:
        """Blocking: queue `requests` (shortest first), step until all finish; returns them in order."""
        for request in sorted(requests, key=lambda r: r.num_tokens):
            self.add_request(request)
        while self.has_unfinished_requests():
            finished = self.step()
            if on_step is not None:
                on_step(finished)
        return requests

    def step(self) -> list[Request]:
        """Schedule one batch, run it, hand each request its output. Returns the finished ones.
        Pooling batches go first; otherwise one generation step (prefill or decode) runs."""
        if self.generation is not None and not self.scheduler.has_unfinished_requests():
            return self.generation.step()  # type: ignore[return-value]
        batch_requests = self.scheduler.schedule()
        if not batch_requests:
            return []
        rows = [r.prompt_token_ids for r in batch_requests]
        shape = self.runner.plan.snap(len(rows), max(map(len, rows)))
        batch = Batch.from_token_ids(rows, shape, self.runner.pad_id, [r.token_type_ids for r in batch_requests])
        specs = [RowSpec(r.task, r.dimensions, r.normalize, r.use_activation) for r in batch_requests]
        try:
            outputs = self.runner.execute(batch, specs)
        except Exception as exc:
            error = BatchFailedError(f"model execution failed on a batch of shape {shape}: {exc}")
            error.__cause__ = exc
            for r in batch_requests:
                r.finish(error=error)
            raise error from exc
        for r, out in zip(batch_requests, outputs):
            r.finish(out)
        self.num_batches += 1
        self.num_requests += len(batch_requests)
        # A chunk is not a request of its own: its text's request is finished once its last chunk is.
        return list(dict.fromkeys(r if r.parent is None else r.parent for r in batch_requests
                                  if r.parent is None or r.parent.all_chunks_done))  # type: ignore[misc]

    def stats(self) -> dict[str, Any]:
        report = self.worker.report
        counter = self.runner.counter
        return {
            "compiles_after_ready": counter.after_ready,
            "compiles_total": counter.total,
            "eager_fallbacks": self.runner.num_fallbacks,
            "compilation_time_s": report.compilation_times.total,
            "warmup_s": report.warmup_s,
            "num_warmed_shapes": report.num_warmed_shapes,
            "startup_s": report.startup_s,
            "rss_bytes": report.rss_bytes,
            "threads": report.threads,
            "num_batches": self.num_batches,
            "num_requests": self.num_requests,
            "dtype": str(self.runner.dtype).removeprefix("torch."),
            "is_compiled": not self.config.compile_config.enforce_eager,
            "quantization": self.runner.quantization,
            "quantization_min_cosine_measured": self.runner.quantization_cosine,
            "int8_kernel": self.runner.int8_kernel,
            "linear_kernel": self.runner.linear_kernel,
            "attention_kernel": self.runner.attention_kernel,
            "tasks": list(self.info.tasks),
            **(self.generation.stats() if self.generation is not None else {}),
        }
