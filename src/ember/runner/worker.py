"""Worker: the startup lifecycle, top to bottom, and nothing else.

    init_device -> load_model -> profile_memory -> init_kv_cache (KV models only)
    -> compile_or_warm_up -> reset_seed -> ready

Models with a KV cache compile during the memory-profiling run (a real forward at the maximum
batch, whose peak sizes the cache); models without one compile in compile_or_warm_up. Both reset
every random generator *after* warm-up, so that the first request sees a freshly seeded state
whatever the model type (vLLM 0.20.1 got both of these wrong).
"""

from __future__ import annotations

import logging
import random
import time

import numpy as np
import torch

from ember.config import EngineConfig
from ember.errors import OutOfMemoryBudgetError
from ember.outputs import CompilationTimes, ReadyReport
from ember.runner.device import init_threads
from ember.runner.memory import resident_bytes
from ember.runner.model_runner import ModelRunner

logger = logging.getLogger(__name__)


class Worker:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.runner: ModelRunner | None = None
        self.report = ReadyReport()
        self.is_ready = False

    def start(self) -> ModelRunner:
        """Run the whole lifecycle; returns the ready runner."""
        start = time.perf_counter()
        self.init_device()
        runner = self.load_model()
        self.profile_memory()
        if runner.info.has_kv_cache:
            self.init_kv_cache()
        self.report.compilation_times = self.compile_or_warm_up()
        self.reset_seed()
        self.report.startup_s = time.perf_counter() - start
        self.report.rss_bytes = resident_bytes()
        runner.mark_ready()
        self.is_ready = True
        times = self.report.compilation_times
        logger.info(
            "ready: %s in %.2f s (compile: encoder %.2f s, language_model %.2f s; warm-up %.2f s over %d shapes; "
            "dtype %s; %d threads; rss %.0f MiB)",
            runner.info.architecture, self.report.startup_s, times.encoder, times.language_model,
            self.report.warmup_s, self.report.num_warmed_shapes, runner.dtype, torch.get_num_threads(),
            self.report.rss_bytes / 2**20,
        )
        return runner

    def init_device(self) -> None:
        threads = init_threads(self.config.device_config.threads)
        logger.info("init device: cpu, %d intra-op threads", threads)

    def load_model(self) -> ModelRunner:
        start = time.perf_counter()
        self.runner = ModelRunner(self.config)
        logger.info("loaded %s from %s in %.2f s", self.runner.info.architecture, self.runner.folder.path,
                    time.perf_counter() - start)
        return self.runner

    def profile_memory(self) -> None:
        """KV-less models: measure what the weights take and check the budget. (KV models run a
        real max-batch forward here, which compiles; see init_kv_cache.)"""
        rss = resident_bytes()
        limit = self.config.device_config.memory_limit
        logger.info("memory after load: rss %.0f MiB", rss / 2**20)
        if limit is not None and rss > limit:
            raise OutOfMemoryBudgetError(
                f"the model needs {rss / 2**20:.0f} MiB resident after load but --memory-limit is "
                f"{limit / 2**20:.0f} MiB; raise --memory-limit (or pick a smaller dtype/model)"
            )

    def init_kv_cache(self) -> None:
        raise NotImplementedError("KV-cache models arrive with the decoder issue")

    def compile_or_warm_up(self) -> CompilationTimes:
        """KV-less models compile here (unless enforce_eager), then every planned shape runs once."""
        runner = self.runner
        assert runner is not None
        compile_s = 0.0 if self.config.compile_config.enforce_eager else runner.compile()
        logger.info("warming up %d shapes...", len(runner.plan.warmup_shapes()))
        start = time.perf_counter()
        warm_compile_s, num_shapes = runner.warm_up()
        compile_s += warm_compile_s
        self.report.warmup_s = time.perf_counter() - start
        self.report.num_warmed_shapes = num_shapes
        return CompilationTimes(encoder=compile_s)

    def reset_seed(self) -> None:
        """Seed python, numpy and torch from the configured seed, after warm-up."""
        seed = self.config.model_config.seed
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
