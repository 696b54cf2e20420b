"""AsyncEngine: the engine for asyncio callers (the HTTP server).

    event loop --(make_requests: validate + tokenize in a small pool)--> EngineLoop thread: add, step...
    engine thread --(loop.call_soon_threadsafe)--> the caller's future, once all its prompts finish

Every route, whatever its task, calls submit() (or make_requests() then run(), to stream tokens).

Nothing blocking runs on the event loop: tokenization and validation go to a thread pool, the
model runs on the EngineLoop's thread. A caller that goes away has its queued prompts dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ember.config import EngineConfig, ModelInfo
from ember.engine.engine_loop import EngineLoop, NotReadyError, RequestGroup, StepStats
from ember.engine.request import Request
from ember.errors import EmberError, InvalidRequestError
from ember.tokenizer import TextTokenizer

__all__ = ["AsyncEngine", "ClientGoneError", "NotReadyError", "StepStats", "TokenSnapshot"]

NUM_TOKENIZE_THREADS = 2
"""Tokenization is Rust that releases the GIL; two threads keep it off the engine's critical path."""


class ClientGoneError(EmberError):
    """The caller went away before its result was ready; its queued prompts were dropped."""


class AsyncEngine:
    """An Engine for asyncio callers. `start()` returns at once; `is_ready` turns True after warm-up.

    Args:
        config, on_step, on_startup_failed: see EngineLoop.
        max_items_per_request: most prompts in one make_requests call (None: any number).
        max_tokens_per_request: most tokens in one make_requests call, after tokenization (None: any).
    """

    def __init__(self, config: EngineConfig, *, max_items_per_request: int | None = None,
                 max_tokens_per_request: int | None = None, **hooks: Any) -> None:
        self.config = config
        self.loop = EngineLoop(config, **hooks)
        self.max_items, self.max_tokens = max_items_per_request, max_tokens_per_request
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

    @property
    def tokenizer_config(self) -> dict[str, Any]:
        """A decoder's tokenizer_config (chat_template, bos_token, eos_token); InvalidRequestError for
        models that do not generate."""
        engine = self.loop.ready_engine()
        engine.info.check_task("generate")
        return engine.runner.tokenizer_config  # type: ignore[union-attr]

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

    async def make_requests(self, task: str, prompts: Any, params: Any) -> list[Request]:
        """Engine.make_requests in the pool: validated, tokenized, nothing queued yet (so a bad
        prompt is a clean InvalidRequestError before a streamed response starts). The item limit
        is checked before tokenizing, the token limit after."""
        num_items = len(prompts) if isinstance(prompts, list) and prompts and not isinstance(prompts[0], int) else 1
        if self.max_items is not None and num_items > self.max_items:
            raise InvalidRequestError(f"the request has {num_items} inputs; at most {self.max_items} are allowed per "
                                      "request (ember serve --max-items-per-request)", param="input")
        requests = await self.run_in_pool(self.loop.ready_engine().make_requests, task, prompts, params)
        num_tokens = sum(r.num_tokens for r in requests)
        if self.max_tokens is not None and num_tokens > self.max_tokens:
            raise InvalidRequestError(f"the request has {num_tokens} tokens; at most {self.max_tokens} are allowed per "
                                      "request (ember serve --max-tokens-per-request): send fewer inputs per request",
                                      param="input")
        return requests

    async def run(self, requests: list[Request], *, is_disconnected: Callable[[], Any] | None = None,
                  on_token: Callable[[TokenSnapshot], None] | None = None) -> list[Request]:
        """Queue `requests` as one group; returns them finished, in order.

        Args:
            is_disconnected: an async function that returns when the caller has gone away.
            on_token: generation: called on the event loop with each sequence's state after each token.

        Raises:
            OverloadedError: the waiting queue is full.
            NotReadyError, EngineDeadError: the engine cannot take requests.
            ClientGoneError: is_disconnected returned first; the prompts were dropped.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Request]] = loop.create_future()
        if on_token is not None:
            for i, seq in enumerate(requests):
                seq.on_update = _snapshotter(loop, on_token, i)  # type: ignore[attr-defined]
        group = RequestGroup(requests, on_done=lambda done: loop.call_soon_threadsafe(_resolve, future, done))
        self.loop.submit(group)
        return await _wait(group, future, is_disconnected)

    async def submit(self, task: str, prompts: Any, params: Any, *,
                     is_disconnected: Callable[[], Any] | None = None) -> list[Request]:
        """The one call every route makes: make_requests, then run. Raises InvalidRequestError
        (nothing was queued) and what run() raises."""
        return await self.run(await self.make_requests(task, prompts, params), is_disconnected=is_disconnected)


@dataclass(frozen=True, slots=True)
class TokenSnapshot:
    """A sequence's state after one step, copied on the engine thread (streaming reads this only)."""

    index: int
    text: str
    num_tokens: int
    finish_reason: str | None


def _snapshotter(loop: asyncio.AbstractEventLoop, on_token: Callable[[TokenSnapshot], None],
                 index: int) -> Callable[[Any], None]:
    def on_update(seq: Any) -> None:
        snap = TokenSnapshot(index, seq.text, len(seq.output_token_ids), seq.finish_reason)
        loop.call_soon_threadsafe(on_token, snap)

    return on_update


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
