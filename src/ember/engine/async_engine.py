"""AsyncEngine: the synchronous Engine driven by one loop thread, awaited from asyncio.

    event loop --(tokenize in a small pool)--> submit queue --> engine thread: add, step, step...
    engine thread --(loop.call_soon_threadsafe)--> the caller's future, once all its prompts finish

The engine thread blocks on the submit queue when idle (no polling) and, between steps, drains
everything that arrived so that concurrent callers share batches. The Engine itself (compile and
warm-up included) is built on that same thread, so an HTTP server can answer while it warms.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ember.config import EngineConfig, ModelInfo
from ember.engine.engine import Engine
from ember.engine.processor import normalize_prompts
from ember.engine.request import Request, RequestStatus
from ember.errors import EmberError, EngineDeadError, OverloadedError
from ember.params import PoolingParams
from ember.tokenizer import TextTokenizer, Tokenized

logger = logging.getLogger(__name__)

_STOP = object()


class NotReadyError(EmberError):
    """The engine is still starting (compiling, warming up); retry later."""


class ClientGoneError(EmberError):
    """The caller went away before its result was ready; its queued prompts were dropped."""


@dataclass(slots=True)
class StepStats:
    """What one engine step did, handed to the `on_step` observer (metrics)."""

    num_seqs: int
    num_tokens: int
    queue_times_s: list[float]
    step_s: float


@dataclass(slots=True, eq=False)
class _Group:
    """The prompts of one caller: finished together, cancelled together."""

    requests: list[Request]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    submitted_at: float = field(default_factory=time.perf_counter)
    remaining: int = 0
    is_cancelled: bool = False

    def on_finish(self, request: Request) -> None:
        """Engine thread: when the last prompt is done, wake the caller."""
        self.remaining -= 1
        if self.remaining == 0:
            self.loop.call_soon_threadsafe(_resolve, self.future, self.requests)


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


class AsyncEngine:
    """An Engine for asyncio callers. `start()` returns at once; `is_ready` turns True after warm-up.

    Args:
        config: the engine configuration (its scheduler_config.max_waiting_requests bounds the queue).
        on_step: called on the engine thread after each batch (metrics); must be quick.
        on_ready: called on the engine thread once warm, before the first request is taken.
        on_startup_failed: called on the engine thread if building the Engine raises.
    """

    def __init__(self, config: EngineConfig, *, on_step: Callable[[StepStats], None] | None = None,
                 on_ready: Callable[[], None] | None = None,
                 on_startup_failed: Callable[[BaseException], None] | None = None) -> None:
        self.config = config
        self.engine: Engine | None = None
        self.startup_error: BaseException | None = None
        self.dead_error: BaseException | None = None
        self.on_step = on_step
        self.on_ready = on_ready
        self.on_startup_failed = on_startup_failed
        self.max_waiting = config.scheduler_config.max_waiting_requests
        self._submit: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._num_pending = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._ready = threading.Event()
        self._in_flight: dict[str, _Group] = {}
        """Engine thread only: request id -> its caller's group, while the request is in the engine."""

    @property
    def is_ready(self) -> bool:
        return self._ready.is_set() and self.dead_error is None

    @property
    def num_pending(self) -> int:
        """Prompts accepted and not yet finished (the bounded queue's depth)."""
        return self._num_pending

    @property
    def info(self) -> ModelInfo:
        return self._ready_engine().info

    @property
    def tokenizer(self) -> TextTokenizer:
        return self._ready_engine().runner.tokenizer

    def start(self) -> None:
        """Build the Engine on the engine thread; returns immediately."""
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ember-tokenize")
        self._thread = threading.Thread(target=self._run, name="ember-engine", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Block until ready (or startup failed); True when ready."""
        self._ready.wait(timeout_s)
        return self.is_ready

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Finish every accepted request, then stop the engine thread."""
        self._submit.put(_STOP)
        if self._thread is not None and self._ready.is_set():
            self._thread.join(timeout_s)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def stats(self) -> dict[str, Any]:
        return self.engine.stats() if self.engine is not None and self._ready.is_set() else {}

    async def run_in_pool(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run blocking work (tokenization, decoding) off the event loop."""
        assert self._pool is not None, "start() first"
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def encode(self, prompts: Any, params: PoolingParams, task: str = "embed",
                     is_disconnected: Callable[[], Any] | None = None) -> list[Request]:
        """Validate, tokenize and run prompts; returns finished Requests in input order.

        Raises:
            InvalidRequestError: a prompt or parameter is not valid (nothing was queued).
            OverloadedError: the waiting queue is full.
            NotReadyError, EngineDeadError: the engine cannot take requests.
        """
        engine = self._ready_engine()
        params.verify(task, engine.info)
        tokenized = await self.run_in_pool(_tokenize, engine, prompts, params)
        requests = engine.make_requests(tokenized, params, task)
        loop = asyncio.get_running_loop()
        group = _Group(requests, loop, loop.create_future(), remaining=len(requests))
        self._reserve(len(requests))
        for r in requests:
            r.on_finish = group.on_finish
            r.is_cancelled = self._cancel_hook(group)
        self._submit.put(group)
        return await self._wait(group, is_disconnected)

    async def _wait(self, group: _Group, is_disconnected: Callable[[], Any] | None) -> list[Request]:
        """Await the group; if the caller disconnects first, its queued prompts are dropped."""
        if is_disconnected is None:
            try:
                return await asyncio.shield(group.future)
            except asyncio.CancelledError:
                group.is_cancelled = True
                raise
        watcher = asyncio.ensure_future(is_disconnected())
        try:
            await asyncio.wait({group.future, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not group.future.done():
                group.is_cancelled = True
            watcher.cancel()
        if group.is_cancelled:
            raise ClientGoneError("the client disconnected before its result was ready")
        return group.future.result()

    def _ready_engine(self) -> Engine:
        if self.dead_error is not None:
            raise EngineDeadError(f"the engine stopped: {self.dead_error}") from self.dead_error
        if self.startup_error is not None:
            raise EngineDeadError(f"the engine failed to start: {self.startup_error}") from self.startup_error
        if not self._ready.is_set() or self.engine is None:
            raise NotReadyError("the engine is warming up; retry shortly")
        return self.engine

    def _reserve(self, n: int) -> None:
        with self._lock:
            # An empty queue always takes a request, however large, so that no request is unservable.
            if self._num_pending and self._num_pending + n > self.max_waiting:
                raise OverloadedError(
                    f"{self._num_pending} prompts are waiting (max_waiting_requests={self.max_waiting}); retry later"
                )
            self._num_pending += n

    def _release(self, n: int) -> None:
        with self._lock:
            self._num_pending -= n

    def _cancel_hook(self, group: _Group) -> Callable[[], bool]:
        """The scheduler asks this before batching a request; a dropped request frees its slot once."""
        is_dropped = False

        def is_cancelled() -> bool:
            nonlocal is_dropped
            if group.is_cancelled and not is_dropped:
                is_dropped = True
                self._release(1)
            return group.is_cancelled

        return is_cancelled

    def _run(self) -> None:
        """Engine thread: start up, then serve until the stop sentinel."""
        try:
            self.engine = Engine(self.config)
        except BaseException as exc:
            logger.exception("engine startup failed")
            self.startup_error = exc
            self._ready.set()
            if self.on_startup_failed is not None:
                self.on_startup_failed(exc)
            return
        self._ready.set()
        if self.on_ready is not None:
            self.on_ready()
        try:
            self._serve(self.engine)
        except BaseException as exc:
            logger.exception("engine loop died")
            self.dead_error = exc
            self._fail_all(exc)

    def _serve(self, engine: Engine) -> None:
        is_stopping = False
        while not (is_stopping and not engine.has_unfinished_requests()):
            for item in self._drain(block=not engine.has_unfinished_requests()):
                if item is _STOP:
                    is_stopping = True
                    continue
                for r in sorted(item.requests, key=lambda r: r.num_tokens):
                    self._in_flight[r.request_id] = item
                    engine.add_request(r)
            if engine.has_unfinished_requests():
                self._step(engine)
            if not engine.has_unfinished_requests():
                self._in_flight.clear()  # what is left belongs to callers that went away

    def _drain(self, *, block: bool) -> list[Any]:
        items = [self._submit.get()] if block else []
        while True:
            try:
                items.append(self._submit.get_nowait())
            except queue.Empty:
                return items

    def _step(self, engine: Engine) -> None:
        """One batch; a failing batch fails its own requests (and only those) with an error."""
        start = time.perf_counter()
        try:
            finished = engine.step()
        except Exception as exc:
            logger.exception("engine step failed; its batch's requests get an error")
            error = exc if isinstance(exc, EngineDeadError) else EngineDeadError(f"engine step failed: {exc}")
            self._fail(error, running_only=True)
            return
        self._release(len(finished))
        groups = [self._in_flight.pop(r.request_id) for r in finished]
        if self.on_step is not None and finished:
            self.on_step(StepStats(len(finished), sum(r.num_tokens for r in finished),
                                   [start - g.submitted_at for g in groups], time.perf_counter() - start))

    def _fail(self, error: BaseException, *, running_only: bool) -> None:
        """Take failed requests out of flight: the failed batch's (the engine may have finished them
        with its error already), or, when the loop died, all of them."""
        gone = [
            r for g in set(self._in_flight.values()) for r in g.requests
            if r.request_id in self._in_flight
            and (r.is_finished or r.status is RequestStatus.RUNNING or not running_only)
        ]
        for r in gone:
            del self._in_flight[r.request_id]
            if not r.is_finished:
                r.finish(error=error)
        self._release(len(gone))

    def _fail_all(self, exc: BaseException) -> None:
        """The loop died: every accepted request gets an error, none hangs."""
        error = EngineDeadError(f"the engine stopped: {exc}")
        self._fail(error, running_only=False)
        for item in self._drain(block=False):
            if item is not _STOP:
                for r in item.requests:
                    r.finish(error=error)
