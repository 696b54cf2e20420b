"""Compile policy shared by the runners: the shape plan, the compile counter, inductor settings.

The plan: every batch is snapped to at least 2 rows and 2 columns, so that no compiled graph is
ever specialized on a dimension of size 1, and the first (compiling) call uses distinct sizes so
that the batch and sequence dimensions are never tied together. One graph with dynamic
dimensions then serves every (batch, seq) in [2, max_num_seqs] x [2, max_model_len]; warm-up
runs the corners and a grid between them before ready. The encoder's graph is built ahead of time
(aot_package.py); runners that use torch.compile run after ready under the "fail_on_recompile"
stance, so an unexpected guard failure is counted and served eagerly, never compiled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

MIN_DIM = 2
"""Smallest batch/seq size of a torch.compile'd graph (the decoder's): dynamic shapes specialize
sizes 0 and 1, so smaller requests are padded up to it."""
EXPORT_MIN_DIM = 1
"""Smallest batch/seq size of the AOT-exported encoder: torch.export with Dim(min=1) covers size 1
too, so a single text runs as a batch of one instead of being padded to two rows (MiniLM, fp32,
16 tokens: 3.6 ms instead of 4.8 ms)."""
# Distinct, not 0/1, not equal to each other: the first trace must not specialize.
_FIRST_SHAPE = (3, 11)


@dataclass(frozen=True, slots=True)
class ShapePlan:
    """The (batch, seq) shapes the engine runs, and how a request batch snaps to them."""

    max_batch: int
    max_seq: int
    max_tokens: int
    """Padded-token budget of one batch (max_num_batched_tokens)."""

    def snap(self, num_seqs: int, longest: int) -> tuple[int, int]:
        assert 1 <= num_seqs <= self.max_batch and 1 <= longest <= self.max_seq, (num_seqs, longest)
        return max(num_seqs, EXPORT_MIN_DIM), max(longest, EXPORT_MIN_DIM)

    def warmup_shapes(self) -> list[tuple[int, int]]:
        """The first shape compiles; the rest exercise the corners and a grid of the plan."""
        batches = sorted({EXPORT_MIN_DIM, self.max_batch})
        seqs = sorted({EXPORT_MIN_DIM, min(64, self.max_seq), self.max_seq})
        first = (min(_FIRST_SHAPE[0], self.max_batch), min(_FIRST_SHAPE[1], self.max_seq))
        shapes = [first]
        for b in batches:
            for s in seqs:
                s_fit = min(s, max(EXPORT_MIN_DIM, self.max_tokens // b))
                if (b, s_fit) not in shapes:
                    shapes.append((b, s_fit))
        return shapes


class CompileCounter:
    """Counts dynamo compilations started while this runner's calls are on the stack.

    Its callback is registered once torch._dynamo is loaded, at the first watched call after
    that: every compile needs dynamo loaded first, and an encoder served from its AOT package
    never loads it, which keeps ~2 s of imports out of a warm start."""

    def __init__(self) -> None:
        self.total = 0
        self.after_ready = 0
        self.is_ready = False
        self._active = threading.local()
        self._is_registered = False
        self._register()

    def _register(self) -> None:
        if self._is_registered or "torch._dynamo" not in sys.modules:
            return
        from torch._dynamo.callback import callback_handler

        callback_handler.register_start_callback(self._on_compile_start)
        self._is_registered = True

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        self._register()
        self._active.on = True
        try:
            yield
        finally:
            self._active.on = False

    def _on_compile_start(self, *args: object) -> None:
        if getattr(self._active, "on", False):
            self.total += 1
            if self.is_ready:
                self.after_ready += 1

    def count_refused(self) -> None:
        """A recompile the stance refused: it would have compiled after ready."""
        self.after_ready += 1


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ember" / f"torch-{torch.__version__}"


def resolve_cache_dir(configured: str | None) -> str:
    """The compile cache folder: the configured one, the default when None, "" when turned off."""
    return configured if configured is not None else str(default_cache_dir())


@contextlib.contextmanager
def inductor_settings(cache_dir: str | None) -> Iterator[None]:
    """Inductor flags for the compile, applied only while compiling (vLLM does the same)."""
    import torch._inductor.config as inductor_config

    patches: dict[str, object] = {"freezing": False}
    if cache_dir == "":
        patches.update(fx_graph_cache=False, autotune_local_cache=False)
    old_env = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if cache_dir:
        try:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
        except OSError as exc:
            logger.warning("compile cache %s cannot be written (%s): compiling without a disk cache", cache_dir, exc)
            patches.update(fx_graph_cache=False, autotune_local_cache=False)
    try:
        with inductor_config.patch(patches):
            yield
    finally:
        if old_env is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = old_env


def is_recompile_refusal(exc: BaseException) -> bool:
    return "fail_on_recompile" in str(exc)
