"""ModelRunner: owns the model, the tokenizer and the compiled graph; runs one batch at a time."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ember.config import EngineConfig, ModelInfo
from ember.model.loader import ModelFolder, build_model
from ember.model.pooler import Pooler, postprocess
from ember.model.registry import model_class
from ember.model.sources import resolve_model_path
from ember.runner import int8
from ember.runner.aot_package import load_or_compile, package_key
from ember.runner.batch import Batch
from ember.runner.compile import CompileCounter, ShapePlan, resolve_cache_dir
from ember.runner.device import cpu_flags, resolve_dtype
from ember.tokenizer import TextTokenizer

logger = logging.getLogger(__name__)

ENCODER_BATCH_TOKENS = 2048
"""Default padded-token budget of an encoder batch: small enough for the activations to stay in
the CPU caches (measured: 16384 -> 32, 2048 -> 39 passages/s on MiniLM, short texts unchanged)."""
INT8_BATCH_TOKENS = 1024
"""The same for int8, whose activations are smaller still. MiniLM, texts/s short / passages
(BENCHMARKS.md): 4096: 849 / 63-65; 2048: 886-912 / 65.5-67; 1024: 963-987 / 67.4-68.4; 768 and
512 no better than 1024."""


@dataclass(frozen=True, slots=True)
class RowRequest:
    """What the runner needs of one row: its pooling task and postprocessing."""

    task: str
    dimensions: int | None
    normalize: bool


class ModelRunner:
    """Loads the model and runs batches. Called only by the worker and the engine loop."""

    def __init__(self, config: EngineConfig, folder: ModelFolder | None = None) -> None:
        self.config = config
        mc = config.model_config
        self.folder = folder or ModelFolder.read(resolve_model_path(mc.model))
        kernel = int8.choose_kernel(mc.int8_kernel, cpu_flags())
        self.quantization = int8.resolve_quantization(
            mc.quantization, mc.dtype, config.compile_config.enforce_eager, kernel,
            model_allows=getattr(model_class(self.folder.architecture), "int8_by_default", False))
        """What runs: "int8" or None (float). quantization="auto" picks int8 where the CPU has a fast
        int8 kernel and the model is compiled, and falls back to float if the int8 gate fails."""
        self.dtype = torch.float32 if self.quantization else resolve_dtype(mc.dtype)
        self.model = build_model(self.folder, self.dtype)
        self.info = self._model_info()
        self.tokenizer = TextTokenizer(self.folder.path, do_lower_case=self.folder.st.do_lower_case)
        self.pooler = Pooler(self.info.pooling_type)
        self.pad_id = self.model.config.pad_token_id
        self.plan = self._shape_plan()
        self.counter = CompileCounter()
        self._compiled = None
        self.int8: int8.Int8Mode | None = None
        """The int8 lifecycle while quantization is "int8" (None in float)."""
        self._calibration_pending = False
        if self.quantization == "int8":
            kernel = kernel or int8.INT_MM  # asked for on a CPU without a fast kernel: the portable one
            self.int8 = int8.Int8Mode(kernel, self._int8_layers_path(kernel), mc.quantization_min_cosine,
                                      required=mc.quantization == "int8", embed_texts=self._embed_texts)
            self._prepare_int8()
        self.num_fallbacks = 0
        """Batches served eagerly instead of compiled (the AOT package never needs it: stays 0)."""

    def _model_info(self) -> ModelInfo:
        mc, st, cfg = self.config.model_config, self.folder.st, self.model.config
        limit = min(x for x in (st.max_seq_length, cfg.max_positions) if x is not None)
        max_len = mc.max_model_len or limit
        if max_len > cfg.max_positions:
            from ember.errors import InvalidRequestError

            raise InvalidRequestError(
                f"max_model_len={max_len} exceeds the model's {cfg.max_positions} positions", param="max_model_len"
            )
        pooler = dict(mc.pooler_config or {})
        pooling_type = str(pooler.get("pooling_type") or st.pooling_type or "CLS").upper()
        normalize = pooler.get("normalize", st.normalize if st.is_sentence_transformer else False)
        return ModelInfo(
            architecture=self.folder.architecture,
            hidden_size=cfg.hidden_size,
            max_model_len=max_len,
            pooling_type=pooling_type,
            normalize=bool(normalize),
            embedding_dimension=cfg.hidden_size,
            prompts=st.prompts,
            default_prompt_name=st.default_prompt_name,
        )

    def _shape_plan(self) -> ShapePlan:
        """The shapes to compile and warm; the batch budget follows what runs (int8 or float)."""
        sc = self.config.scheduler_config
        default_budget = INT8_BATCH_TOKENS if self.quantization == "int8" else ENCODER_BATCH_TOKENS
        budget = max(sc.max_num_batched_tokens or default_budget, self.info.max_model_len)
        return ShapePlan(sc.max_num_seqs, self.info.max_model_len, budget)

    @property
    def quantization_cosine(self) -> float | None:
        """The int8 gate's measurement (None in float)."""
        return self.int8.measured if self.int8 is not None else None

    def _prepare_int8(self) -> None:
        """Load the stored int8 layers; else calibrate now if the model runs eagerly, or leave the
        calibration to compile(), which runs it while the graph builds."""
        assert self.int8 is not None
        if self.int8.load_stored(self.model):
            self._apply_gate()
        elif self.config.compile_config.enforce_eager:
            self.int8.calibrate(self.model)
            self.int8.measure_and_store(self.model)
            self._apply_gate()
        else:
            self._calibration_pending = True

    def _int8_layers_path(self, kernel: int8.Int8Kernel) -> Path | None:
        # The key covers the model files, plan, versions, the kernel, and the code and texts of int8/.
        cache_dir = self._cache_dir()
        return cache_dir / f"int8-{self._cache_key(f'int8-layers-{kernel.name}')}.pt" if cache_dir else None

    def _apply_gate(self) -> None:
        """Keep int8 if it passes its gate; else (quantization="auto") run the float model, with
        the float batch budget."""
        assert self.int8 is not None
        if self.int8.passes_gate():
            return
        self.quantization, self.int8, self._compiled = None, None, None
        self.dtype = resolve_dtype(self.config.model_config.dtype)
        self.model = build_model(self.folder, self.dtype)
        self.plan = self._shape_plan()

    @torch.inference_mode()
    def _embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Vectors of `texts`, in their order, computed (compiled, once compile() has run) in batches
        of similar lengths (less padding: int8 calibration's capture pass took 4.4 s instead of
        5.5 s, at the same quality)."""
        limit = self.info.max_model_len
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vectors: list[torch.Tensor] = [torch.empty(0)] * len(texts)
        step = min(32, self.plan.max_batch)
        for start in range(0, len(order), step):
            chunk = order[start:start + step]
            rows = [t.token_ids for t in self.tokenizer.encode_batch([texts[i] for i in chunk], [limit] * len(chunk))]
            shape = self.plan.snap(len(rows), max(map(len, rows)))
            batch = Batch.from_token_ids(rows, shape, self.pad_id)
            for i, vector in zip(chunk, self.execute(batch, [RowRequest("embed", None, True)] * len(rows)), strict=True):
                vectors[i] = vector
        return torch.stack(vectors)

    def _cache_dir(self) -> Path | None:
        """Where compiled packages and int8 layers are stored; None when caching is off ("")."""
        cache_dir = resolve_cache_dir(self.config.compile_config.compile_cache_dir)
        return Path(cache_dir) if cache_dir else None

    def _cache_key(self, variant: str | None) -> str:
        files = [p for p in self.folder.path.iterdir() if p.suffix in (".safetensors", ".bin") or p.name == "config.json"]
        return package_key(files, self.dtype, self.plan, self.info.architecture, variant)

    def compile(self) -> float:
        """Load the AOT-compiled encoder for the whole shape plan (building it on a cache miss);
        returns the seconds spent compiling and loading. A pending int8 calibration runs while the
        graph builds; the gate then measures the compiled int8 model."""
        calibrating = self._calibration_pending
        self._calibration_pending = False
        mode = self.int8
        template = mode.template(self.model) if calibrating and mode is not None else None
        scope = self.config.compile_config.compile_scope
        per_layer = scope == "layer" or (scope == "auto" and self.quantization == "int8")
        graph = load_or_compile(self.model, self.plan, self._cache_dir(), self._cache_key(self._variant()),
                                self.pad_id, per_layer=per_layer, template=template,
                                meanwhile=(lambda: mode.calibrate(self.model)) if template is not None else None,
                                graph_constants=mode.kernel.graph_constants() if mode is not None else None)
        self._compiled = graph.run
        logger.info("encoder graph %s in %.2f s (compile %.2f s, load %.2f s)%s",
                    "loaded from cache" if graph.from_cache else "compiled", graph.compile_s + graph.load_s,
                    graph.compile_s, graph.load_s, f": {graph.path}" if graph.path else "")
        seconds = graph.compile_s + graph.load_s
        if template is not None and mode is not None:
            mode.measure_and_store(self.model)
            self._apply_gate()
            if self.quantization is None:  # the gate sent it back to float: compile that
                seconds += self.compile()
        return seconds

    def _variant(self) -> str | None:
        """What the compiled package's key says runs: None (float) or "int8-<kernel>"."""
        return f"int8-{self.int8.kernel.name}" if self.int8 is not None else None

    def warm_up(self) -> tuple[float, int]:
        """Run every shape of the plan once (first-call costs are paid here). Returns (seconds
        compiling, shapes run); the encoder compiled ahead of time in compile(), so 0.0."""
        # The request path around the graph has first-use costs too (the tokenizer's thread
        # pool, truncation, pooling and normalization kernels): pay them here, not on request 1.
        texts = ["warm up the tokenizer", "and its thread pool " * 4]
        self.tokenizer.encode_batch(texts, [None, 4])
        shapes = self.plan.warmup_shapes()
        specs = [RowRequest("embed", None, True), RowRequest("embed", 2, True), RowRequest("token_embed", None, True)]
        for shape in shapes:
            rows = [[self.pad_id] * shape[1]] * shape[0]
            spec = [specs[i % len(specs)] for i in range(shape[0])]
            self.execute(Batch.from_token_ids(rows, shape, self.pad_id), spec)
        # The plan ends on its largest batch. End on a few single short texts instead, the most
        # common request, so that the state the engine is left in at ready (caches, allocator,
        # threads) is the one a stream of such requests keeps (first call 1.55 -> 1.24x the
        # median, together with the tqdm fix in LLM.encode; BENCHMARKS.md).
        small = self.plan.snap(1, min(16, self.plan.max_seq))
        for _ in range(3):
            self.execute(Batch.from_token_ids([[self.pad_id] * small[1]], small, self.pad_id), specs[:1])
        return 0.0, len(shapes)

    def mark_ready(self) -> None:
        self.counter.is_ready = True

    @torch.inference_mode()
    def execute(self, batch: Batch, rows: Sequence[RowRequest]) -> list[torch.Tensor]:
        """Forward one batch; returns per real row its float32 output (vector or token matrix)."""
        hidden = self._forward(batch)  # [batch, seq, hidden]
        n = batch.num_seqs
        out: list[torch.Tensor] = [None] * n  # type: ignore[list-item]
        embed_rows = [i for i in range(n) if rows[i].task == "embed"]
        if embed_rows:
            pooled = self.pooler(hidden[:n], batch.attention_mask[:n])  # [n, hidden]
            pooled = postprocess(
                pooled[embed_rows],
                [rows[i].dimensions for i in embed_rows],
                [rows[i].normalize for i in embed_rows],
            )
            for j, i in enumerate(embed_rows):
                dims = rows[i].dimensions
                out[i] = pooled[j, :dims] if dims else pooled[j]
        for i in range(n):
            if rows[i].task == "token_embed":
                length = int(batch.attention_mask[i].sum())
                vecs = hidden[i, :length].float()
                out[i] = torch.nn.functional.normalize(vecs, dim=-1) if rows[i].normalize else vecs
        return out

    def _forward(self, batch: Batch) -> torch.Tensor:
        if self._compiled is None:
            return self.model(batch.input_ids, batch.attention_mask)
        # The package cannot compile; the counter still watches for any compile on this path.
        with self.counter.watching():
            return self._compiled(batch.input_ids, batch.attention_mask)
