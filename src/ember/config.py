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


def option(default: Any = None, help: str = "", *, choices: tuple[Any, ...] | None = None,
           cli: str | None = None, none_flag: str | None = None, env: str | None = None) -> Any:
    """A config field and its command-line flag, in one place (entrypoints/args.py builds the flags).

    Args:
        default: the field's default (a dict or list default is copied per instance).
        help: what the field means, shown by --help.
        choices: the allowed values, when they are few.
        cli: "positional" for the model argument, "off" for a field without a flag.
        none_flag: the word that stands for None on the command line ("none" for quantization).
        env: an environment variable that gives the flag's default (read when the CLI parses).
    """
    meta = {"help": help, "choices": choices, "cli": cli, "none_flag": none_flag, "env": env}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True)
class ModelConfig:
    model: str = option(DEFAULT_MODEL, "model folder or installed name", cli="positional")
    dtype: DType = option("auto", "compute dtype; auto: bfloat16 where the CPU has native bf16, else float32",
                          choices=("auto", "float32", "bfloat16"))
    max_model_len: int | None = option(None, "longest sequence in tokens, special tokens included "
                                       "(default: the model's limit)")
    seed: int = option(0, "seed of every random generator (python, numpy, torch), applied after warm-up")
    quantization: str | None = option(
        "auto", "int8: int8 linears on per-token int8 activations (runner/int8/), refused at startup below "
        "--quantization-min-cosine; auto: int8 where the CPU has a fast int8 kernel, the dtype is auto and the "
        "model compiles, float if int8 misses the gate; none: float (--dtype)",
        choices=("auto", "int8", None), none_flag="none")
    int8_kernel: str = option("auto", "int8 GEMM: int_mm (torch._int_mm's products: oneDNN with VNNI/AMX, Ember's "
                              "kernel on AVX2), onednn (oneDNN's u8 x s8 on 7-bit activations, ffn_out float32), "
                              "auto: int_mm where either runs",
                              choices=("auto", "int_mm", "onednn"))
    linear_kernel: str = option("auto", "float32/bfloat16 GEMM of the encoder's linears: onednn (oneDNN, on a weight "
                                "packed once at load), aten (torch's own: MKL's sgemm for float32), auto: onednn on "
                                "x86 with AVX2",
                                choices=("auto", "onednn", "aten"))
    quantization_min_cosine: float = option(0.999, "lowest cosine vs float32 the int8 model must reach on the "
                                            "built-in probe set (embeddings, or scores for classifiers)")
    long_inputs: str = option(
        "error", "an input over max_model_len, when its request does not say (truncate_prompt_tokens, long_inputs): "
        "error (a 400 that says how to truncate), truncate (keep the first max_model_len tokens, as "
        "sentence-transformers and TEI's --auto-truncate do) or chunk (embed overlapping windows and return their "
        "token-weighted mean; other tasks truncate)", choices=("error", "truncate", "chunk"))
    default_prompt_name: str | None = option(
        None, "the prompt put in front of every text when a request names none (one of the model's "
        "config_sentence_transformers.json prompts; default: the model's own default_prompt_name)")
    pooler_config: dict[str, Any] | None = option(None, 'overrides of the model\'s pooling, JSON: '
                                                  '\'{"pooling_type": "CLS", "normalize": true}\'')
    served_model_name: str | None = option(None, "name reported and accepted by the API (default: the model "
                                           "argument)")


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_num_batched_tokens: int | None = option(
        None, "padded-token budget of one batch, rows x longest row (default: 2048 for encoders, 1024 in int8, "
        "whose activations then stay in the CPU caches, 8192 for decoder prefill; never below max_model_len)")
    max_num_seqs: int = option(64, "most sequences in one batch")
    max_waiting_requests: int = option(4096, "prompts allowed to wait (server); past it requests get 503 + "
                                       "Retry-After")


@dataclass(frozen=True, slots=True)
class CompileConfig:
    enforce_eager: bool = option(False, "run the model eagerly: no compile, no compile-driven warm-up")
    compile_cache_dir: str | None = option(None, "compile cache folder (default: under the user's cache dir; "
                                           "'' turns the disk cache off)")
    compile_scope: str = option(
        "auto", "encoders: model compiles the whole model into one graph; layer compiles one layer, run once per "
        "layer (shorter first start, ~0.3 ms more per call); auto: layer for int8 and for models that read "
        "segment ids (cross-encoders), else model", choices=("auto", "model", "layer"))


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    threads: int | None = option(None, "intra-op threads for the model (default: the number of physical cores)")
    memory_limit: int | None = option(None, "resident memory budget in bytes; startup fails if the model does "
                                      "not fit")


@dataclass(frozen=True, slots=True)
class CacheConfig:
    kv_cache_memory: int | None = option(None, "KV-cache budget in bytes, decoders (default: "
                                         "--kv-cache-memory-fraction of the memory left after profiling)")
    kv_cache_memory_fraction: float = option(0.25, "share of the available memory given to the KV cache when "
                                             "--kv-cache-memory is not set")
    block_size: int = option(16, "tokens per KV-cache block")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """What `ember serve` adds to the engine: where it listens and who may call it."""

    host: str = option("127.0.0.1", "address to bind")
    port: int = option(8000, "port to bind")
    api_key: str | None = option(None, "require 'Authorization: Bearer KEY' on every route but /health and "
                                 "/metrics", env="EMBER_API_KEY")
    max_body_bytes: int = option(32 * 2**20, "largest request body in bytes; larger ones get 413 before they "
                                 "are read")
    max_concurrent_requests: int = option(256, "requests served at once (the probes /health and /metrics aside); "
                                          "past it requests get 503 + Retry-After")
    max_body_bytes_in_flight: int = option(256 * 2**20, "bytes of body the requests being served may hold "
                                           "together; past it requests get 503 + Retry-After (bounds memory)")
    max_items_per_request: int = option(2048, "most inputs (texts, token lists, pairs, documents) in one request, "
                                        "as OpenAI allows; more is a 400")
    max_tokens_per_request: int = option(300_000, "most tokens in one request after tokenization, as OpenAI "
                                         "allows for embeddings; more is a 400")
    max_connections: int = option(2048, "open connections uvicorn accepts (keep-alive ones included); past it "
                                  "uvicorn itself answers a plain 503")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def verify(self) -> None:
        if not isinstance(self.port, int) or isinstance(self.port, bool) or not 0 <= self.port <= 65535:
            raise InvalidRequestError(f"port must be in [0, 65535], got {self.port!r}", param="port")
        for name in ("max_body_bytes", "max_concurrent_requests", "max_body_bytes_in_flight",
                     "max_items_per_request", "max_tokens_per_request", "max_connections"):
            _positive(name, getattr(self, name))


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
        for name, part_cls in ENGINE_PARTS.items():
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
        if m.long_inputs not in ("error", "truncate", "chunk"):
            raise InvalidRequestError(f"long_inputs must be 'error', 'truncate' or 'chunk', got {m.long_inputs!r}",
                                      param="long_inputs")
        if m.int8_kernel not in ("auto", "int_mm", "onednn"):
            raise InvalidRequestError(f"int8_kernel must be 'auto', 'int_mm' or 'onednn', got {m.int8_kernel!r}",
                                      param="int8_kernel")
        if m.linear_kernel not in ("auto", "onednn", "aten"):
            raise InvalidRequestError(f"linear_kernel must be 'auto', 'onednn' or 'aten', got {m.linear_kernel!r}",
                                      param="linear_kernel")
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


ENGINE_PARTS = {
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
    """What the loaded model is and serves; resolved by the runner, read by request checks."""

    architecture: str
    hidden_size: int
    max_model_len: int
    pooling_type: str
    normalize: bool
    vocab_size: int = 0
    """Token ids must lie in [0, vocab_size)."""
    tasks: tuple[str, ...] = ("embed", "token_embed")
    """The pooling tasks this model serves (params.POOLING_TASKS), plus "generate" for decoders."""
    has_kv_cache: bool = False
    embedding_dimension: int | None = None
    """Size of the vectors the model returns (after any Dense module)."""
    matryoshka_dimensions: tuple[int, ...] | None = None
    """Allowed `dimensions` values; None means any value up to embedding_dimension."""
    is_matryoshka: bool = True
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    labels: tuple[str, ...] = ()
    """Classifiers: the label of each output, in order (config.json's id2label)."""
    multi_label: bool = False
    """Classifiers: problem_type "multi_label_classification" (sigmoid per label, not softmax)."""

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def check_task(self, task: str) -> None:
        """InvalidRequestError naming the tasks this model serves, when `task` is not one of them."""
        if task not in self.tasks:
            raise InvalidRequestError(
                f"model {self.architecture} does not serve the {task!r} task; it serves: {', '.join(self.tasks)}",
                param="task")
