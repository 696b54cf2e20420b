"""Worker: the startup lifecycle, top to bottom, and nothing else.

    init_device -> load_model -> profile_memory -> init_kv_cache (KV models only)
    -> compile_or_warm_up -> reset_seed -> ready

Models with a KV cache compile during the memory-profiling run (a real forward at the maximum
batch, whose peak sizes the cache); models without one compile in compile_or_warm_up. Both reset
every random generator *after* warm-up, so that the first request sees a freshly seeded state
whatever the model type (vLLM 0.20.1 got both of these wrong).
"""

from __future__ import annotations

import gc
import logging
import os
import random
import time

import numpy as np
import torch

from ember import omp_defaults
from ember.config import EngineConfig
from ember.errors import InvalidRequestError, OutOfMemoryBudgetError
from ember.model.loader import ModelFolder
from ember.model.registry import is_generative
from ember.model.sources import resolve_model_path
from ember.outputs import CompilationTimes, ReadyReport
from ember.runner.decoder_runner import DecoderModelRunner
from ember.runner.device import init_threads
from ember.runner.kv_cache import kv_cache_budget, num_blocks_for, peak_resident_bytes
from ember.runner.memory import resident_bytes
from ember.runner.model_runner import ModelRunner

logger = logging.getLogger(__name__)


class Worker:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.runner: ModelRunner | DecoderModelRunner | None = None
        self._prefill_compile_s = 0.0
        self.report = ReadyReport()
        self.is_ready = False

    def start(self) -> ModelRunner | DecoderModelRunner:
        """Run the whole lifecycle; returns the ready runner."""
        start = time.perf_counter()
        self.init_device()
        runner = self.load_model()
        self.profile_memory()
        if runner.info.has_kv_cache:
            self.init_kv_cache()
        self.report.compilation_times = self.compile_or_warm_up()
        self.reset_seed()
        # Everything built so far (torch, the model, the compiled graph) lives as long as the
        # process: take it out of the garbage collector's scans, which otherwise stall serving
        # (seen in the server's profile: gc in the event loop under load). vLLM does the same.
        gc.freeze()
        self.report.startup_s = time.perf_counter() - start
        self.report.rss_bytes = resident_bytes()
        runner.mark_ready()
        self.is_ready = True
        times = self.report.compilation_times
        logger.info(
            "ready: %s in %.2f s (compile: encoder %.2f s, language_model %.2f s; warm-up %.2f s over %d shapes; "
            "dtype %s%s; %d threads; rss %.0f MiB)",
            runner.info.architecture, self.report.startup_s, times.encoder, times.language_model,
            self.report.warmup_s, self.report.num_warmed_shapes, runner.dtype,
            f", {runner.quantization} linears" if runner.quantization else "",
            torch.get_num_threads(),
            self.report.rss_bytes / 2**20,
        )
        return runner

    def init_device(self) -> None:
        threads = self.report.threads = init_threads(self.config.device_config.threads)
        spin = (f"GOMP_SPINCOUNT={omp_defaults.applied} (Ember's default)" if omp_defaults.applied else
                os.environ.get("OMP_WAIT_POLICY") or os.environ.get("GOMP_SPINCOUNT") or "libgomp default")
        logger.info("init device: cpu, %d intra-op threads; OpenMP idle spin: %s", threads, spin)

    def load_model(self) -> ModelRunner | DecoderModelRunner:
        """The runner follows the model's kind: decoders with an LM head get the KV-cache runner."""
        start = time.perf_counter()
        folder = ModelFolder.read(resolve_model_path(self.config.model_config.model))
        if is_generative(folder.architecture):
            if self.config.model_config.quantization == "int8":  # "auto" means none here
                raise InvalidRequestError(
                    f"quantization={self.config.model_config.quantization!r} is for embedding, reranking and "
                    f"classification models; {folder.architecture} generates text and runs unquantized",
                    param="quantization")
            self.runner = DecoderModelRunner(self.config, folder)
        else:
            self.runner = ModelRunner(self.config, folder)
        logger.info("loaded %s from %s in %.2f s", self.runner.info.architecture, self.runner.folder.path,
                    time.perf_counter() - start)
        return self.runner

    def profile_memory(self) -> None:
        """KV-less models: measure what the weights take and check the budget. KV models first run
        the prefill graph at every planned shape, the last one the maximum token batch: this
        compiles (unless enforce_eager) and warms prefill, and its peak sizes the KV cache."""
        runner = self.runner
        if isinstance(runner, DecoderModelRunner):
            logger.info("profiling run: prefill up to %d tokens per batch...", runner.plan.max_tokens)
            start = time.perf_counter()
            self._prefill_compile_s, num_shapes = runner.profile_run()
            self.report.warmup_s += time.perf_counter() - start
            self.report.num_warmed_shapes += num_shapes
        rss = resident_bytes()
        limit = self.config.device_config.memory_limit
        logger.info("memory after load: rss %.0f MiB", rss / 2**20)
        if limit is not None and rss > limit:
            raise OutOfMemoryBudgetError(
                f"the model needs {rss / 2**20:.0f} MiB resident after load but --memory-limit is "
                f"{limit / 2**20:.0f} MiB; raise --memory-limit (or pick a smaller dtype/model)"
            )

    def init_kv_cache(self) -> None:
        """Size the KV cache from the budget left after the profiling run, then allocate it."""
        runner = self.runner
        assert isinstance(runner, DecoderModelRunner)
        cc, peak = self.config.cache_config, peak_resident_bytes()
        budget, flag = kv_cache_budget(kv_cache_memory=cc.kv_cache_memory, fraction=cc.kv_cache_memory_fraction,
                                       memory_limit=self.config.device_config.memory_limit, peak_rss=peak)
        num_blocks = num_blocks_for(runner.kv_spec, budget, flag, self.config.scheduler_config.max_num_seqs)
        runner.init_kv_cache(num_blocks)
        logger.info("KV cache: %d blocks of %d tokens (%.1f MiB of a %.1f MiB budget); peak rss %.0f MiB",
                    num_blocks, runner.kv_spec.block_size, num_blocks * runner.kv_spec.block_bytes / 2**20,
                    budget / 2**20, peak / 2**20)

    def compile_or_warm_up(self) -> CompilationTimes:
        """KV-less models compile here (unless enforce_eager), then every planned shape runs once.
        KV models compiled prefill while profiling; here they compile and warm the decode graph."""
        runner = self.runner
        assert runner is not None
        compile_s = 0.0 if self.config.compile_config.enforce_eager else runner.compile()
        logger.info("warming up %d shapes...", len(runner.plan.warmup_shapes()))
        start = time.perf_counter()
        warm_compile_s, num_shapes = runner.warm_up()
        compile_s += warm_compile_s
        self.report.warmup_s += time.perf_counter() - start
        self.report.num_warmed_shapes += num_shapes
        if runner.info.has_kv_cache:  # prefill compiled in profile_memory, decode here
            return CompilationTimes(language_model=self._prefill_compile_s + compile_s)
        return CompilationTimes(encoder=compile_s)

    def reset_seed(self) -> None:
        """Seed python, numpy and torch from the configured seed, after warm-up."""
        seed = self.config.model_config.seed
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
