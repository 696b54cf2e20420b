"""Engine configuration: frozen dataclasses split by concern.

Only the standard library is used here; resolution that needs torch (dtype "auto", thread
counts) happens in the runner, which records the resolved values in the model runner.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from ember.errors import InvalidRequestError

DType = Literal["auto", "float32", "bfloat16"]
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass(frozen=True, slots=True)
class ModelConfig:
    model: str = DEFAULT_MODEL
    """A model folder, or a known name that resolves to an installed package's folder."""
    dtype: DType = "auto"
    """Compute dtype. "auto" picks bfloat16 where the CPU has native bf16, else float32."""
    max_model_len: int | None = None
    """Longest sequence in tokens (special tokens included). Default: the model's limit."""
    seed: int = 0
    """Seed applied to every random generator after warm-up (python, numpy, torch)."""
    quantization: str | None = "auto"
    """"int8": int8 linears on per-token int8 activations (runner/int8/), compiled like the
    float32 model; refused at startup below quantization_min_cosine. "auto": int8 where the CPU
    has a fast int8 kernel (VNNI, or AVX2 through oneDNN), the dtype is "auto" and the model
    compiles, falling back to float below quantization_min_cosine; else float. None: float (dtype)."""
    int8_kernel: str = "auto"
    """The int8 GEMM: "int_mm" (torch._int_mm, fast with VNNI/AMX), "onednn" (oneDNN u8 x s8 on
    7-bit activations, fast on AVX2 without VNNI), or "auto": the one this CPU runs fast."""
    quantization_min_cosine: float = 0.999
    """The int8 model's lowest cosine against float32 on the built-in probe set must reach this."""
    pooler_config: dict[str, Any] | None = None
    """Overrides of the model's pooling: {"pooling_type": "MEAN", "normalize": true}."""
    served_model_name: str | None = None
    """Name reported by the API. Default: the model argument."""


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_num_batched_tokens: int | None = None
    """Budget of a batch in padded tokens (rows x longest row). None: 2048 for encoders, 1024 in int8 (their
    activations then stay in the CPU caches: passages/s +20% over 8192, measured in
    BENCHMARKS.md) and 8192 for decoder prefill; never below max_model_len."""
    max_num_seqs: int = 64
    """Most sequences in one batch."""
    max_waiting_requests: int = 4096
    """Bound of the request queue (server); past it requests are refused with 503."""


@dataclass(frozen=True, slots=True)
class CompileConfig:
    enforce_eager: bool = False
    """Run the model eagerly: no torch.compile, no compile-driven warm-up."""
    compile_cache_dir: str | None = None
    """Folder of the on-disk compile cache. None: the default under the user's cache dir;
    "" turns the disk cache off."""
    compile_scope: str = "auto"
    """Encoders: "model" compiles the whole model into one graph; "layer" compiles one layer and
    runs it once per layer (when the layers share one structure): a first start ~4 s shorter on
    MiniLM (12 s in int8, more for deeper models), for ~0.3 ms more per call (BENCHMARKS.md).
    "auto": "layer" for int8 (whose first start must also calibrate), else "model"."""


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    threads: int | None = None
    """Intra-op threads for the model. Default: the number of physical cores."""
    memory_limit: int | None = None
    """Resident memory budget in bytes; startup fails if the model does not fit."""


@dataclass(frozen=True, slots=True)
class CacheConfig:
    kv_cache_memory: int | None = None
    """KV-cache budget in bytes (models with a KV cache). Default: kv_cache_memory_fraction of the
    memory available after the profiling run."""
    kv_cache_memory_fraction: float = 0.25
    """Share of the available memory given to the KV cache when kv_cache_memory is not set."""
    block_size: int = 16
    """Tokens per KV-cache block."""


@dataclass(frozen=True, slots=True)
class EngineConfig:
    model_config: ModelConfig = field(default_factory=ModelConfig)
    scheduler_config: SchedulerConfig = field(default_factory=SchedulerConfig)
    compile_config: CompileConfig = field(default_factory=CompileConfig)
    device_config: DeviceConfig = field(default_factory=DeviceConfig)
    cache_config: CacheConfig = field(default_factory=CacheConfig)

    @classmethod
    def from_kwargs(cls, model: str | None = None, **kwargs: Any) -> EngineConfig:
        """Build from flat keyword arguments (LLM(...) and the CLI share this path)."""
        if model is not None:
            kwargs["model"] = model
        parts: dict[str, Any] = {}
        for name, part_cls in _PARTS.items():
            names = {f.name for f in dataclasses.fields(part_cls)}
            part_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
            parts[name] = part_cls(**part_kwargs)
        if kwargs:
            raise InvalidRequestError(
                f"unknown engine argument(s): {', '.join(sorted(kwargs))}", param=next(iter(kwargs))
            )
        config = cls(**parts)
        config.verify()
        return config

    def verify(self) -> None:
        """Reject values that can never work, naming the field."""
        m, s, d = self.model_config, self.scheduler_config, self.device_config
        if not isinstance(m.model, str) or not m.model:
            raise InvalidRequestError(f"model must be a non-empty string, got {m.model!r}", param="model")
        if m.dtype not in ("auto", "float32", "bfloat16"):
            raise InvalidRequestError(
                f"dtype must be one of auto, float32, bfloat16; got {m.dtype!r}", param="dtype"
            )
        if m.quantization not in (None, "int8", "auto"):
            raise InvalidRequestError(f"quantization must be 'auto', 'int8' or None, got {m.quantization!r}",
                                      param="quantization")
        if m.int8_kernel not in ("auto", "int_mm", "onednn"):
            raise InvalidRequestError(f"int8_kernel must be 'auto', 'int_mm' or 'onednn', got {m.int8_kernel!r}",
                                      param="int8_kernel")
        if m.quantization == "int8" and m.dtype == "bfloat16":
            raise InvalidRequestError("quantization='int8' quantizes the float32 model; use dtype 'auto' or "
                                      "'float32'", param="dtype")
        if self.compile_config.compile_scope not in ("auto", "model", "layer"):
            raise InvalidRequestError(f"compile_scope must be 'auto', 'model' or 'layer', got "
                                      f"{self.compile_config.compile_scope!r}", param="compile_scope")
        if not isinstance(m.quantization_min_cosine, (int, float)) or not 0 < m.quantization_min_cosine <= 1:
            raise InvalidRequestError(f"quantization_min_cosine must be in (0, 1], got {m.quantization_min_cosine!r}",
                                      param="quantization_min_cosine")
        _positive("max_model_len", m.max_model_len, allow_none=True)
        _positive("max_num_batched_tokens", s.max_num_batched_tokens, allow_none=True)
        _positive("max_num_seqs", s.max_num_seqs)
        _positive("max_waiting_requests", s.max_waiting_requests)
        _positive("threads", d.threads, allow_none=True)
        _positive("memory_limit", d.memory_limit, allow_none=True)
        _positive("kv_cache_memory", self.cache_config.kv_cache_memory, allow_none=True)
        _positive("block_size", self.cache_config.block_size)
        fraction = self.cache_config.kv_cache_memory_fraction
        if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 < fraction <= 1:
            raise InvalidRequestError(
                f"kv_cache_memory_fraction must be in (0, 1], got {fraction!r}", param="kv_cache_memory_fraction"
            )
        if not isinstance(m.seed, int) or isinstance(m.seed, bool):
            raise InvalidRequestError(f"seed must be an integer, got {m.seed!r}", param="seed")


_PARTS = {
    "model_config": ModelConfig,
    "scheduler_config": SchedulerConfig,
    "compile_config": CompileConfig,
    "device_config": DeviceConfig,
    "cache_config": CacheConfig,
}


def _positive(name: str, value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InvalidRequestError(f"{name} must be a positive integer, got {value!r}", param=name)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the loaded model is and serves; resolved by the loader, read by request checks."""

    architecture: str
    hidden_size: int
    max_model_len: int
    pooling_type: str
    normalize: bool
    has_kv_cache: bool = False
    embedding_dimension: int | None = None
    """Size of the vectors the model returns (after any Dense module)."""
    matryoshka_dimensions: tuple[int, ...] | None = None
    """Allowed `dimensions` values; None means any value up to embedding_dimension."""
    is_matryoshka: bool = True
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
