"""Engine: the synchronous core. step() = schedule, execute, update."""

from __future__ import annotations

import itertools
import logging
from typing import Any

from ember.config import EngineConfig
from ember.engine.generation import GenerationEngine
from ember.engine.processor import InputProcessor
from ember.engine.request import Request
from ember.engine.scheduler import Scheduler
from ember.engine.sequence import Sequence
from ember.errors import EngineDeadError
from ember.params import PoolingParams
from ember.runner.batch import Batch
from ember.runner.model_runner import RowRequest
from ember.runner.worker import Worker
from ember.tokenizer import Tokenized

logger = logging.getLogger(__name__)


class Engine:
    """Owns the worker (and so the model) and the scheduler. Not thread-safe: one caller steps it."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.worker = Worker(config)
        self.runner = self.worker.start()
        self.info = self.runner.info
        self.processor = InputProcessor(self.runner.tokenizer, self.info)
        self.scheduler = Scheduler(config.scheduler_config, self.runner.plan.max_tokens)
        self.generation = GenerationEngine(self.runner, config) if self.info.has_kv_cache else None  # type: ignore[arg-type]
        self._ids = itertools.count()
        self.num_batches = 0
        self.num_requests = 0

    def make_requests(self, tokenized: list[Tokenized], params: PoolingParams, task: str) -> list[Request]:
        """Requests for already validated prompts (see `processor`), with the model's defaults applied."""
        normalize = self.info.normalize if params.normalize is None else params.normalize
        return [
            Request(
                request_id=str(next(self._ids)),
                prompt_token_ids=tok.token_ids,
                task=task,
                dimensions=params.dimensions,
                normalize=normalize,
                truncated=tok.truncated,
            )
            for tok in tokenized
        ]

    def add_request(self, request: Request | Sequence) -> None:
        if isinstance(request, Sequence):
            assert self.generation is not None, "generation requests need a decoder (checked on submit)"
            self.generation.add(request)
            return
        self.scheduler.add(request)

    def has_unfinished_requests(self) -> bool:
        generating = self.generation is not None and self.generation.has_unfinished_requests()
        return self.scheduler.has_unfinished_requests() or generating

    def step(self) -> list[Request] | list[Sequence]:
        """Schedule one batch, run it, hand each request its output. Returns the finished ones.
        Embedding batches go first; otherwise one generation step (prefill or decode) runs."""
        if self.generation is not None and not self.scheduler.has_unfinished_requests():
            return self.generation.step()
        batch_requests = self.scheduler.schedule()
        if not batch_requests:
            return []
        rows = [r.prompt_token_ids for r in batch_requests]
        shape = self.runner.plan.snap(len(rows), max(map(len, rows)))
        batch = Batch.from_token_ids(rows, shape, self.runner.pad_id)
        specs = [RowRequest(r.task, r.dimensions, r.normalize) for r in batch_requests]
        try:
            outputs = self.runner.execute(batch, specs)
        except Exception as exc:
            error = EngineDeadError(f"model execution failed on a batch of shape {shape}: {exc}")
            error.__cause__ = exc
            for r in batch_requests:
                r.finish(error=error)
            raise error from exc
        for r, out in zip(batch_requests, outputs):
            r.finish(out)
        self.num_batches += 1
        self.num_requests += len(batch_requests)
        return batch_requests

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
            "num_batches": self.num_batches,
            "num_requests": self.num_requests,
            "dtype": str(self.runner.dtype).removeprefix("torch."),
            "is_compiled": not self.config.compile_config.enforce_eager,
            "quantization": self.runner.quantization,
            "quantization_min_cosine_measured": self.runner.quantization_cosine,
            **(self.generation.stats() if self.generation is not None else {}),
        }
