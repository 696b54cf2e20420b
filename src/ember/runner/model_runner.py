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
from ember.runner import quantize
from ember.runner.aot_package import load_or_compile, package_key
from ember.runner.batch import Batch
from ember.runner.compile import CompileCounter, ShapePlan, resolve_cache_dir
from ember.runner.device import cpu_flags, resolve_dtype
from ember.runner.memory import release_free_memory
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
        self.quantization = quantize.resolve_quantization(
            mc.quantization, mc.dtype, config.compile_config.enforce_eager, cpu_flags(),
            model_allows=getattr(model_class(self.folder.architecture), "int8_by_default", False))
        """What runs: "int8" or None (float). quantization="auto" picks int8 where the CPU has int8 dot
        products and the model is compiled, and falls back to float if the int8 gate fails."""
        self.dtype = torch.float32 if self.quantization else resolve_dtype(mc.dtype)
        self.model = build_model(self.folder, self.dtype)
        self.info = self._model_info()
        self.tokenizer = TextTokenizer(self.folder.path, do_lower_case=self.folder.st.do_lower_case)
        self.pooler = Pooler(self.info.pooling_type)
        self.pad_id = self.model.config.pad_token_id
        sc = config.scheduler_config
        default_budget = INT8_BATCH_TOKENS if self.quantization == "int8" else ENCODER_BATCH_TOKENS
        budget = max(sc.max_num_batched_tokens or default_budget, self.info.max_model_len)
        self.plan = ShapePlan(sc.max_num_seqs, self.info.max_model_len, budget)
        self.counter = CompileCounter()
        self._compiled = None
        self.quantization_cosine: float | None = None
        self._probe: tuple[list[str], torch.Tensor] | None = None
        """The int8 gate's probe texts and their float32 vectors, from calibration to the gate."""
        self._calibration_pending = False
        if self.quantization == "int8":
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

    def _prepare_int8(self) -> None:
        """Load the stored int8 layers; else calibrate now if the model runs eagerly, or leave the
        calibration to compile(), which runs it while the graph builds."""
        path = self._int8_layers_path()
        if path is not None and path.is_file():
            try:
                measured = quantize.load_quantized(self.model, path)
            except Exception as exc:  # noqa: BLE001 - any unreadable entry: recalibrate
                logger.warning("ignoring unreadable int8 cache entry %s (%s); recalibrating", path, exc)
            else:
                logger.info("int8: layers loaded from %s", path)
                self._apply_gate(measured)
                return
        if self.config.compile_config.enforce_eager:
            self._calibrate()
            self._finish_int8()
        else:
            self._calibration_pending = True

    def _int8_layers_path(self) -> Path | None:
        # The key covers the model files, plan, versions and the code of model/ and quantize.py.
        cache_dir = self._cache_dir()
        return cache_dir / f"int8-{self._cache_key('int8-layers')}.pt" if cache_dir else None

    def _calibrate(self) -> None:
        """Embed the probe texts in float32 (the gate's reference), capture what every linear sees
        on the calibration texts, and swap the linears for their int8 versions."""
        calibration, probe = quantize.calibration_and_probe_texts()
        self._probe = (probe, self._embed_texts(probe))
        captured = quantize.capture_linear_inputs(self.model, lambda: self._embed_texts(calibration))
        replaced = quantize.quantize_int8(self.model, captured)
        del captured
        release_free_memory()
        logger.info("int8: %d linear layers calibrated on %d texts", replaced, len(calibration))

    def _finish_int8(self) -> None:
        """Measure the int8 model (compiled, if it is) on the probe set, store the layers with the
        measurement, and apply the gate."""
        assert self._probe is not None
        probe, reference = self._probe
        self._probe = None
        measured = quantize.lowest_cosine(reference, self._embed_texts(probe))
        path = self._int8_layers_path()
        if path is not None:
            try:
                quantize.save_quantized(self.model, path, measured)
            except OSError as exc:  # a read-only or full cache costs the next start a calibration, nothing more
                logger.warning("could not store the int8 layers in %s (%s)", path, exc)
        self._apply_gate(measured)

    def _apply_gate(self, measured: float) -> None:
        """Keep int8 if `measured` (the probe set's lowest cosine vs float32) reaches the gate.
        Else refuse (quantization="int8") or fall back to the float model ("auto")."""
        mc = self.config.model_config
        try:
            self.quantization_cosine = quantize.enforce_gate(measured, mc.quantization_min_cosine)
        except quantize.QuantizationQualityError:
            if mc.quantization == "int8":
                raise
            logger.warning("int8 reaches a min cosine of %.6f against float32 on the probe set, below "
                           "quantization_min_cosine=%s: running the float model instead", measured,
                           mc.quantization_min_cosine)
            self.quantization, self.dtype, self._compiled = None, resolve_dtype(mc.dtype), None
            self.model = build_model(self.folder, self.dtype)
            return
        logger.info("int8: min cosine vs float32 on the probe set %.4f (gate %.4f)", measured,
                    mc.quantization_min_cosine)

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
        template = quantize.int8_template(self.model) if calibrating else None
        scope = self.config.compile_config.compile_scope
        per_layer = scope == "layer" or (scope == "auto" and self.quantization == "int8")
        graph = load_or_compile(self.model, self.plan, self._cache_dir(), self._cache_key(self.quantization),
                                self.pad_id, per_layer=per_layer, template=template,
                                meanwhile=self._calibrate if calibrating else None)
        self._compiled = graph.run
        logger.info("encoder graph %s in %.2f s (compile %.2f s, load %.2f s)%s",
                    "loaded from cache" if graph.from_cache else "compiled", graph.compile_s + graph.load_s,
                    graph.compile_s, graph.load_s, f": {graph.path}" if graph.path else "")
        seconds = graph.compile_s + graph.load_s
        if calibrating:
            self._finish_int8()
            if self.quantization is None:  # the gate sent it back to float: compile that
                seconds += self.compile()
        return seconds

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
