"""The runner contract: what the worker and the engine may ask of a model runner, whatever the
model (encoder, cross-encoder, classifier, decoder). Both runners implement it; decoders add the
KV-cache steps (profile_run, init_kv_cache, prefill, decode) that only their lifecycle branch calls."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch

from ember.config import ModelInfo
from ember.model.pooler import RowSpec
from ember.runner.batch import Batch
from ember.runner.compile import CompileCounter
from ember.tokenizer import TextTokenizer


class Runner(Protocol):
    info: ModelInfo
    tokenizer: TextTokenizer
    plan: Any
    """The shapes to compile and warm (encoders: ShapePlan; decoders: DecoderShapePlan)."""
    pad_id: int
    counter: CompileCounter
    dtype: torch.dtype
    quantization: str | None
    num_fallbacks: int

    @property
    def quantization_cosine(self) -> float | None: ...

    @property
    def int8_kernel(self) -> str | None: ...

    @property
    def linear_kernel(self) -> str | None:
        """What runs the encoder's float linears ("onednn" or "aten"); None for a decoder."""

    @property
    def attention_kernel(self) -> str | None:
        """What runs an encoder's attention ("ember-<isa>" or "sdpa"); None for a decoder."""

    def compile(self) -> float:
        """Compile (or load the compiled graph); returns the seconds it took."""

    def warm_up(self) -> tuple[float, int]:
        """Run every planned shape once; returns (seconds compiling, shapes run)."""

    def mark_ready(self) -> None:
        """From here on the compile counter counts compiles after ready."""

    def execute(self, batch: Batch, rows: Sequence[RowSpec]) -> list[torch.Tensor]:
        """Forward one pooling batch; per real row its float32 output (row_outputs in model/pooler.py)."""
