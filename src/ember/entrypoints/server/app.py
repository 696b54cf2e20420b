"""create_app: the FastAPI app around one AsyncEngine. The engine warms up in the background
while the app already answers (/health says 503 until it is ready)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ember.config import EngineConfig, ServerConfig
from ember.engine.async_engine import AsyncEngine
from ember.entrypoints.server import errors
from ember.entrypoints.server.admission import Admission, AdmissionMiddleware
from ember.entrypoints.server.metrics import ServerMetrics
from ember.entrypoints.server.middleware import MetricsMiddleware
from ember.entrypoints.server.protocol import JSONBody
from ember.entrypoints.server.routes import (
    classify,
    completions,
    embeddings,
    health,
    models,
    pooling,
    scoring,
    tokenize,
)
from ember.entrypoints.server.state import ServerState
from ember.entrypoints.server.warmup import warm_http_path

logger = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 60.0


def create_app(config: EngineConfig, settings: ServerConfig | None = None, *,
               on_engine_failed: Callable[[BaseException], None] | None = None,
               start_when_warm: bool = False) -> FastAPI:
    """The app; its lifespan starts the engine (in a thread) and stops it after in-flight requests.

    Args:
        config: the engine configuration.
        settings: host, port (for the ready line), API key, the limits in front of the work.
        on_engine_failed: called (on the engine thread) if the engine cannot start, e.g. to stop the server.
        start_when_warm: the lifespan's startup returns only once the engine and the HTTP path are
            warm (and raises if the engine cannot start), for hosts that route traffic as soon as
            startup returns (Ray Serve). Otherwise startup returns at once and /health says 503
            until ready, which is what a load balancer in front of `ember serve` polls.
    """
    settings = settings or ServerConfig()
    model_name = config.model_config.served_model_name or config.model_config.model
    metrics = ServerMetrics()
    engine = AsyncEngine(config, max_items_per_request=settings.max_items_per_request,
                         max_tokens_per_request=settings.max_tokens_per_request,
                         on_step=metrics.observe_step, on_startup_failed=on_engine_failed)
    metrics.watch(engine, model_name)
    state = ServerState(engine, settings, metrics, model_name,
                        frozenset({model_name, config.model_config.model}), int(time.time()), Admission(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logger.info("starting engine: %s", config)
        engine.start()
        warm_up = asyncio.create_task(_warm_up_then_serve(app, state))
        if start_when_warm:
            await warm_up
            if not state.http_warm:
                await asyncio.to_thread(engine.shutdown, SHUTDOWN_TIMEOUT_S)
                raise RuntimeError(f"the engine did not start: {engine.startup_error or engine.dead_error}")
        yield
        warm_up.cancel()
        logger.info("shutting down: finishing in-flight requests")
        await asyncio.to_thread(engine.shutdown, SHUTDOWN_TIMEOUT_S)

    app = FastAPI(title="Ember", summary="OpenAI-, Cohere- and Jina-compatible server: embed, rerank, score, classify, generate", lifespan=lifespan,
                  default_response_class=JSONBody)
    app.state.ember = state
    for module in (embeddings, pooling, scoring, classify, tokenize, models, health, completions):
        app.include_router(module.router)
    errors.install(app)
    app.add_middleware(AdmissionMiddleware, admission=state.admission)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


async def _warm_up_then_serve(app: FastAPI, state: ServerState) -> None:
    """Once the engine is warm, warm the HTTP path too; then /health says 200 and "ready" is logged."""
    engine = state.engine
    while not engine.is_ready:  # polled: a thread blocked on it would hold up a shutdown
        if engine.startup_error is not None or engine.dead_error is not None:
            return  # /health reports it
        await asyncio.sleep(0.02)
    start = time.perf_counter()
    await warm_http_path(app, tasks=engine.info.tasks, api_key=state.settings.api_key)
    state.http_warm = True
    logger.info("HTTP path warmed in %.2f s", time.perf_counter() - start)
    _log_ready(engine, state.settings, state.model_name)


def _log_ready(engine: AsyncEngine, settings: ServerConfig, model_name: str) -> None:
    stats = engine.stats()
    logger.info(
        "ready: serving %s at %s (startup %.1f s, compile %.1f s, warm-up %.1f s over %d shapes, %s)",
        model_name, settings.url, stats["startup_s"], stats["compilation_time_s"], stats["warmup_s"],
        stats["num_warmed_shapes"], _precision(stats),
    )


def _precision(stats: dict) -> str:
    if stats.get("quantization"):
        return f"{stats['quantization']} linears, min cosine {stats['quantization_min_cosine_measured']:.4f} vs float32"
    return f"dtype {stats['dtype']}"
