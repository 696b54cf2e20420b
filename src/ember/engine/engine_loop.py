"""EngineLoop: the one thread that owns an Engine. It builds it (compile and warm-up included), then
blocks on its submit queue when idle (no polling) and, between steps, drains everything that arrived,
so that concurrent callers share batches. Callers hand in RequestGroups from any thread."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ember.config import EngineConfig
from ember.engine.engine import Engine
from ember.engine.request import Request, RequestStatus
from ember.errors import BatchFailedError, EmberError, EngineDeadError, OverloadedError

logger = logging.getLogger(__name__)

_STOP = object()


class NotReadyError(EmberError):
    """The engine is still starting (compiling, warming up); retry later."""


@dataclass(slots=True)
class StepStats:
    """What one engine step did, handed to the `on_step` observer (metrics)."""

    num_seqs: int
    num_tokens: int
    queue_times_s: list[float]
    step_s: float


@dataclass(slots=True, eq=False)
class RequestGroup:
    """The prompts of one caller: finished together (`on_done` runs on the engine thread), cancelled together."""

    requests: list[Request]
    on_done: Callable[[list[Request]], None]
    submitted_at: float = field(default_factory=time.perf_counter)
    remaining: int = 0
    is_cancelled: bool = False

    def on_finish(self, request: Request) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            self.on_done(self.requests)


class EngineLoop:
    """Runs an Engine on its own thread. `start()` returns at once; `is_ready` turns True after warm-up.

    Args:
        config: the engine configuration; scheduler_config.max_waiting_requests bounds the queue.
        on_step: called on the engine thread after each batch (metrics); must be quick.
        on_startup_failed: called on the engine thread if building the Engine raises.
    """

    def __init__(self, config: EngineConfig, *, on_step: Callable[[StepStats], None] | None = None,
                 on_startup_failed: Callable[[BaseException], None] | None = None) -> None:
        self.config = config
        self.engine: Engine | None = None
        self.startup_error: BaseException | None = None
        self.dead_error: BaseException | None = None
        self.on_step, self.on_startup_failed = on_step, on_startup_failed
        self.max_waiting = config.scheduler_config.max_waiting_requests
        self.num_pending = 0
        """Prompts accepted and not yet finished or dropped: the bounded queue's depth."""
        self._submit: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="ember-engine", daemon=True)
        self._ready = threading.Event()
        self._in_flight: dict[str, RequestGroup] = {}
        """Engine thread only: request id -> its caller's group, while the request is in the engine."""

    @property
    def is_ready(self) -> bool:
        return self._ready.is_set() and self.dead_error is None

    def start(self) -> None:
        self._thread.start()

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Block until ready (or startup failed); True when ready."""
        self._ready.wait(timeout_s)
        return self.is_ready

    def stop(self, timeout_s: float | None = None) -> None:
        """Finish every accepted request, then end the thread (not waited for while still warming)."""
        self._submit.put(_STOP)
        if self._thread.is_alive() and self._ready.is_set():
            self._thread.join(timeout_s)

    def ready_engine(self) -> Engine:
        """The Engine, for thread-safe parts only (processor, info, make_requests)."""
        if self.dead_error is not None:
            raise EngineDeadError(f"the engine stopped: {self.dead_error}") from self.dead_error
        if self.startup_error is not None:
            raise EngineDeadError(f"the engine failed to start: {self.startup_error}") from self.startup_error
        if not self._ready.is_set() or self.engine is None:
            raise NotReadyError("the engine is warming up; retry shortly")
        return self.engine

    def submit(self, group: RequestGroup) -> None:
        """Queue a group (any thread). Raises OverloadedError when the queue is full."""
        with self._lock:
            n, pending = len(group.requests), self.num_pending
            # An empty queue always takes a request, however large, so that no request is unservable.
            if pending and pending + n > self.max_waiting:
                raise OverloadedError(f"{pending} prompts are waiting (max_waiting_requests={self.max_waiting}); "
                                      "retry later")
            self.num_pending += n
        group.remaining = len(group.requests)
        for r in group.requests:
            r.on_finish = group.on_finish
            r.is_cancelled = self._cancel_hook(group)
        self._submit.put(group)

    def _release(self, n: int) -> None:
        with self._lock:
            self.num_pending -= n

    def _cancel_hook(self, group: RequestGroup) -> Callable[[], bool]:
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
            self.engine = engine = Engine(self.config)
        except BaseException as exc:
            logger.exception("engine startup failed")
            self.startup_error = exc
            self._ready.set()
            if self.on_startup_failed is not None:
                self.on_startup_failed(exc)
            return
        self._ready.set()
        try:
            self._serve(engine)
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
            error = exc if isinstance(exc, (BatchFailedError, EngineDeadError)) else BatchFailedError(
                f"the batch failed: {exc}")
            self._fail(error, running_only=True)
            return
        # A request taken out of flight already (its batch, or a chunk's, failed) is not counted again.
        groups = [g for g in (self._in_flight.pop(r.request_id, None) for r in finished) if g is not None]
        self._release(len(groups))
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
