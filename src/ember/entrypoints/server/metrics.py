"""Prometheus metrics of one app, in its own CollectorRegistry (several apps can share a process)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ember.engine.async_engine import AsyncEngine, StepStats

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768)


class EngineCollector(Collector):
    """Reads the engine's own counters at scrape time (compiles, startup timings, model info)."""

    def __init__(self, engine: AsyncEngine, model_name: str) -> None:
        self.engine = engine
        self.model_name = model_name

    def collect(self) -> Iterator[Metric]:
        stats: dict[str, Any] = self.engine.stats()
        ready = GaugeMetricFamily("ember_ready", "1 once the engine is warm and serving, else 0")
        ready.add_metric([], 1.0 if self.engine.is_ready else 0.0)
        yield ready
        queue = GaugeMetricFamily("ember_queue_depth", "Prompts accepted and not yet finished")
        queue.add_metric([], float(self.engine.num_pending))
        yield queue
        if not stats:
            return
        yield CounterMetricFamily("ember_compiles_after_ready", "torch.compile runs started after ready "
                                  "(always 0 by design)", value=stats["compiles_after_ready"])
        yield CounterMetricFamily("ember_compiles", "torch.compile runs in total", value=stats["compiles_total"])
        yield CounterMetricFamily("ember_eager_fallbacks", "Batches served eagerly because they would recompile",
                                  value=stats["eager_fallbacks"])
        for name, key, doc in (("compilation", "compilation_time_s", "Seconds spent compiling before ready"),
                               ("warmup", "warmup_s", "Seconds of warm-up before ready"),
                               ("startup", "startup_s", "Seconds from engine start to ready")):
            yield GaugeMetricFamily(f"ember_{name}_seconds", doc, value=stats[key])
        yield self._model_info(stats)

    def _model_info(self, stats: dict[str, Any]) -> Metric:
        info = self.engine.info
        metric = InfoMetricFamily("ember_model", "The served model")
        metric.add_metric([], {
            "model": self.model_name, "architecture": info.architecture, "dtype": stats["dtype"],
            "max_model_len": str(info.max_model_len), "pooling": info.pooling_type,
            "compiled": str(stats["is_compiled"]).lower(),
        })
        return metric


class ServerMetrics:
    """The app's metrics; `observe_step` is the engine's on_step hook (engine thread)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("ember_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.latency = Histogram("ember_request_duration_seconds", "HTTP request latency", ["route"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram("ember_queue_time_seconds", "Time a prompt waited before its batch ran",
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("ember_batch_size", "Sequences per batch", buckets=_SIZE_BUCKETS, registry=r)
        self.batch_tokens = Histogram("ember_batch_tokens", "Prompt tokens per batch (before padding)",
                                      buckets=_TOKEN_BUCKETS, registry=r)
        self.step_time = Histogram("ember_batch_duration_seconds", "Seconds per engine step",
                                   buckets=_LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("ember_prompt_tokens", "Prompt tokens processed", registry=r)
        self.in_progress = Gauge("ember_requests_in_progress", "HTTP requests being served", registry=r)

    def watch(self, engine: AsyncEngine, model_name: str) -> None:
        self.registry.register(EngineCollector(engine, model_name))

    def observe_step(self, stats: StepStats) -> None:
        self.batch_size.observe(stats.num_seqs)
        self.batch_tokens.observe(stats.num_tokens)
        self.prompt_tokens.inc(stats.num_tokens)
        self.step_time.observe(stats.step_s)
        for wait in stats.queue_times_s:
            self.queue_time.observe(wait)

    def observe_request(self, route: str, status: int, duration_s: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(duration_s)
