"""AsyncEngine: the engine for asyncio callers (the HTTP server).

    event loop --(validate + tokenize in a small pool)--> EngineLoop thread: add, step, step...
    engine thread --(loop.call_soon_threadsafe)--> the caller's future, once all its prompts finish

Nothing blocking runs on the event loop: tokenization and validation go to a thread pool, the
model runs on the EngineLoop's thread. A caller that goes away has its queued prompts dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ember.config import EngineConfig, ModelInfo
from ember.engine.engine import Engine
from ember.engine.engine_loop import EngineLoop, NotReadyError, RequestGroup, StepStats
from ember.engine.processor import normalize_prompts
from ember.engine.request import Request
from ember.errors import EmberError
from ember.params import PoolingParams
from ember.tokenizer import TextTokenizer, Tokenized

__all__ = ["AsyncEngine", "ClientGoneError", "NotReadyError", "StepStats"]

NUM_TOKENIZE_THREADS = 2
"""Tokenization is Rust that releases the GIL; two threads keep it off the engine's critical path."""


class ClientGoneError(EmberError):
    """The caller went away before its result was ready; its queued prompts were dropped."""


class AsyncEngine:
    """An Engine for asyncio callers. `start()` returns at once; `is_ready` turns True after warm-up.

    Args: see EngineLoop (config, on_step, on_startup_failed).
    """

    def __init__(self, config: EngineConfig, **hooks: Any) -> None:
        self.config = config
        self.loop = EngineLoop(config, **hooks)
        self._pool: ThreadPoolExecutor | None = None

    @property
    def is_ready(self) -> bool:
        return self.loop.is_ready

    @property
    def startup_error(self) -> BaseException | None:
        return self.loop.startup_error

    @property
    def dead_error(self) -> BaseException | None:
        return self.loop.dead_error

    @property
    def num_pending(self) -> int:
        """Prompts accepted and not yet finished (the bounded queue's depth)."""
        return self.loop.num_pending

    @property
    def info(self) -> ModelInfo:
        return self.loop.ready_engine().info

    @property
    def tokenizer(self) -> TextTokenizer:
        return self.loop.ready_engine().runner.tokenizer

    def start(self) -> None:
        """Start the pool (its threads now, not on the first request) and the engine thread."""
        self._pool = ThreadPoolExecutor(max_workers=NUM_TOKENIZE_THREADS, thread_name_prefix="ember-tokenize")
        for _ in range(NUM_TOKENIZE_THREADS):
            self._pool.submit(time.sleep, 0.01)
        self.loop.start()

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        return self.loop.wait_ready(timeout_s)

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Finish every accepted request, then stop the engine thread and the pool."""
        self.loop.stop(timeout_s)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def stats(self) -> dict[str, Any]:
        """The engine's counters (empty until ready)."""
        return self.loop.engine.stats() if self.loop.engine is not None and self.is_ready else {}

    async def run_in_pool(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run blocking work (tokenization, decoding) off the event loop."""
        assert self._pool is not None, "start() first"
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def encode(self, prompts: Any, params: PoolingParams, task: str = "embed",
                     is_disconnected: Callable[[], Any] | None = None) -> list[Request]:
        """Validate, tokenize and run prompts; returns finished Requests in input order.

        Args:
            is_disconnected: an async function that returns when the caller has gone away.

        Raises:
            InvalidRequestError: a prompt or parameter is not valid (nothing was queued).
            OverloadedError: the waiting queue is full.
            NotReadyError, EngineDeadError: the engine cannot take requests.
            ClientGoneError: is_disconnected returned first; the prompts were dropped.
        """
        engine = self.loop.ready_engine()
        params.verify(task, engine.info)
        tokenized = await self.run_in_pool(_tokenize, engine, prompts, params)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Request]] = loop.create_future()
        group = RequestGroup(engine.make_requests(tokenized, params, task),
                             on_done=lambda requests: loop.call_soon_threadsafe(_resolve, future, requests))
        self.loop.submit(group)
        return await _wait(group, future, is_disconnected)


def _tokenize(engine: Engine, prompts: Any, params: PoolingParams) -> list[Tokenized]:
    """Pool thread: validation and tokenization, all of it off the event loop."""
    return engine.processor.process(normalize_prompts(prompts), params)


def _resolve(future: asyncio.Future, requests: list[Request]) -> None:
    if future.done():
        return
    error = next((r.error for r in requests if r.error is not None), None)
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(requests)


async def _wait(group: RequestGroup, future: asyncio.Future, is_disconnected: Callable[[], Any] | None) -> Any:
    """Await the group's future; if the caller goes away first, its queued prompts are dropped."""
    if is_disconnected is None:
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            group.is_cancelled = True
            raise
    watcher = asyncio.ensure_future(is_disconnected())
    try:
        await asyncio.wait({future, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not future.done():
            group.is_cancelled = True
        watcher.cancel()
    if group.is_cancelled:
        raise ClientGoneError("the client disconnected before its result was ready")
    return future.result()
