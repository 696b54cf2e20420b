"""ModelRunner: owns the model, the tokenizer and the compiled graph; runs one batch at a time."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ember import kernels
from ember.config import EngineConfig
from ember.errors import UnsupportedModelError
from ember.kernels import attention as attention_kernel
from ember.model.dense import load_dense
from ember.model.heads import M3_UNUSED_ROLES, OutputHeads, SpladeWeights, load_m3_heads, special_token_ids
from ember.model.info import describe_model
from ember.model.loader import ModelFolder, build_model
from ember.model.pooler import Pooler, RowSpec, row_outputs
from ember.model.registry import model_class
from ember.model.sources import resolve_model_path
from ember.runner import int8, packed_linear
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


class ModelRunner:
    """Loads the model and runs batches. Called only by the worker and the engine loop."""

    def __init__(self, config: EngineConfig, folder: ModelFolder | None = None) -> None:
        self.config = config
        mc = config.model_config
        self.folder = folder or ModelFolder.read(resolve_model_path(mc.model))
        cc = config.compile_config
        cache_dir = resolve_cache_dir(cc.compile_cache_dir)
        # Ember's kernels are built (first start, side by side, the compiler outside the GIL) or loaded
        # while the model loads; _await_kernels() joins them before the model first runs. Every encoder
        # calls the attention kernel, the longest to build (1.8 s of g++ on a Zen 3): it starts before
        # int8.choose, which on an AVX2 CPU builds the int8 GEMM first to decide on it.
        self._kernels = [self._start_kernels(cache_dir, int8_kernels=False)]
        self.quantization, int8_kernel = int8.choose(
            mc.quantization, mc.dtype, cc.enforce_eager, mc.int8_kernel,
            getattr(model_class(self.folder.architecture), "int8_by_default", False), cache_dir)
        """What runs: "int8" or None (float). quantization="auto" picks int8 where the CPU has a fast
        int8 kernel and the model is compiled, and falls back to float if the int8 gate fails."""
        if int8_kernel is not None and int8_kernel.name == "int_mm":
            self._kernels.append(self._start_kernels(cache_dir, int8_kernels=True))
        self.dtype = torch.float32 if self.quantization else resolve_dtype(mc.dtype)
        self.linear_kernel = packed_linear.choose(mc.linear_kernel, cpu_flags(), self.dtype)
        """What runs the float linears: "onednn" (runner/packed_linear.py) or "aten"."""
        self.model = self._build_model(self.dtype, int8_kernel)
        self.tokenizer = TextTokenizer(self.folder.path, do_lower_case=self.folder.st.do_lower_case)
        self.m3_heads = load_m3_heads(self.folder.path, self.model.config.hidden_size, self.model.config.vocab_size,
                                      special_token_ids(self.folder.path, M3_UNUSED_ROLES, self.tokenizer.token_id))
        """bge-m3's sparse and multi-vector heads, from the folder's sparse_linear.pt / colbert_linear.pt."""
        self.heads = self._output_heads()
        self.info = describe_model(self.folder, self.model.config, mc, self.tokenizer.vocab_size, generative=False,
                                   sparse=self.heads.sparse is not None,
                                   multi_vector=self.heads.multi_vector is not None)
        self.pooler = Pooler(self.info.pooling_type)
        self.pair_segment_id = self._pair_segment_id()
        self.pad_id = self.model.config.pad_token_id
        self.plan = self._shape_plan()
        self.counter = CompileCounter()
        self._compiled = None
        self.int8: int8.Int8Mode | None = None
        """The int8 lifecycle while quantization is "int8" (None in float)."""
        self._calibration_pending = False
        if int8_kernel is not None:
            self.int8 = self._int8_mode(int8_kernel)
            self._prepare_int8()
        self.num_fallbacks = 0
        """Batches served eagerly instead of compiled (the AOT package never needs it: stays 0)."""

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

    @property
    def int8_kernel(self) -> str | None:
        """The int8 rung that runs, e.g. "int_mm" or "int_mm-float-ffn_out" (None in float)."""
        return self.int8.kernel.label if self.int8 is not None else None

    def _prepare_int8(self) -> None:
        """Load the stored int8 layers; else calibrate now if the model runs eagerly, or leave the
        calibration to compile(), which runs it while the graph builds."""
        assert self.int8 is not None
        if self.int8.load_stored(self.model):
            self._apply_gate()
        elif self.config.compile_config.enforce_eager:
            self._await_kernels()
            self.int8.calibrate(self.model)
            self.int8.measure_and_store(self.model)
            self._apply_gate()
        else:
            self._calibration_pending = True

    def _int8_mode(self, kernel: int8.Int8Kernel) -> int8.Int8Mode:
        mc = self.config.model_config
        return int8.Int8Mode(kernel, self._int8_layers_path(kernel), mc.quantization_min_cosine,
                             required=mc.quantization == "int8", embed_texts=self._embed_texts,
                             compare=int8.score_agreement if self.info.num_labels else None)

    def _int8_layers_path(self, kernel: int8.Int8Kernel) -> Path | None:
        # The key covers the model files, plan, versions, the kernel, and the code and texts of int8/.
        cache_dir = self._cache_dir()
        key = self._cache_key(f"int8-layers-{kernel.label}", per_thread_count=False)
        return cache_dir / f"int8-{key}.pt" if cache_dir else None

    def _apply_gate(self) -> None:
        """Keep int8 if it passes its gate; a rung that lands close to the bar (gate.keeps_rung)
        gives way to the stricter one (_next_rung); below the gate with no rung left,
        quantization="auto" runs the float model, with the float batch budget."""
        assert self.int8 is not None
        stricter = self.int8.kernel.stricter()
        if stricter is not None and not int8.keeps_rung(self.int8.measured, self.int8.min_cosine):
            logger.info("int8 (%s): %.6f against float32 on the probe set, too close to the gate %s; trying %s",
                        self.int8.kernel.label, self.int8.measured, self.int8.min_cosine, stricter.label)
            self._next_rung(stricter)
            return
        if self.int8.passes_gate():
            return
        self.quantization, self.int8 = None, None
        self._rebuild(resolve_dtype(self.config.model_config.dtype))

    def _next_rung(self, kernel: int8.Int8Kernel) -> None:
        """Run `kernel`'s rung: its stored layers if the cache has them; else, when this process
        just calibrated the rung before, that calibration with more linears in float32 (no
        second calibration run); else a calibration from the float32 weights."""
        previous, self.int8 = self.int8, self._int8_mode(kernel)
        self._compiled = None
        float_model = self._build_model(torch.float32, kernel)
        if self.int8.load_stored(float_model):
            self._rebuild(torch.float32, float_model)
            self._apply_gate()
            return
        if not previous.can_hand_down():  # the rung before came from the cache
            self._rebuild(torch.float32, float_model)
            self._prepare_int8()
            return
        self.int8.inherit(previous, self.model, float_model)
        if self.config.compile_config.enforce_eager:
            self.int8.measure_and_store(self.model)
            self._apply_gate()
        # else compile() builds this rung's graph and then measures it

    def _rebuild(self, dtype: torch.dtype, model: torch.nn.Module | None = None) -> None:
        """A fresh model from the folder's weights (the int8 one was quantized in place), or `model`."""
        self._compiled = None
        self.dtype = dtype
        self.linear_kernel = packed_linear.choose(self.config.model_config.linear_kernel, cpu_flags(), dtype)
        self.model = model if model is not None else self._build_model(self.dtype, None)
        self.heads = self._output_heads()
        self.plan = self._shape_plan()

    def _build_model(self, dtype: torch.dtype, int8_kernel: int8.Int8Kernel | None) -> torch.nn.Module:
        """The model from the folder's weights in `dtype`; where linear_kernel says so, the linears
        that stay float run on oneDNN: not the ones `int8_kernel` (if any) quantizes, whose packing
        would be thrown away (MiniLM 58 ms, mpnet 133 ms of every start), nor the heads (they run
        once per row, eagerly)."""
        model = build_model(self.folder, dtype)
        if self.linear_kernel == "onednn":
            quantized = int8_kernel.quantizes if int8_kernel is not None else (lambda name: False)
            packed_linear.pack_linears(model, skip=lambda name: name.startswith(int8.FLOAT_HEADS) or quantized(name))
        return model

    def _output_heads(self) -> OutputHeads:
        """What runs after the compiled graph, per output kind (model/heads.py). The classifier
        and a SPLADE head belong to the model's checkpoint, so they follow a rebuilt model."""
        sparse, multi_vector = self.m3_heads
        if hasattr(self.model, "sparse_head"):
            sparse = SpladeWeights(self.model.sparse_head)
        return OutputHeads(classifier=getattr(self.model, "head", None),
                           multi_label=self.folder.hf_config.get("problem_type") == "multi_label_classification",
                           dense=load_dense(self.folder.st.dense), sparse=sparse, multi_vector=multi_vector)

    @torch.inference_mode()
    def _embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Vectors of `texts` (classifiers: their scores, which the int8 gate compares), in their
        order, computed (compiled, once compile() has run) in batches of similar lengths (less
        padding: int8 calibration's capture pass took 4.4 s instead of 5.5 s, at the same quality)."""
        limit = self.info.max_model_len
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vectors: list[torch.Tensor] = [torch.empty(0)] * len(texts)
        step = min(32, self.plan.max_batch)
        for start in range(0, len(order), step):
            chunk = order[start:start + step]
            rows = [t.token_ids for t in self.tokenizer.encode_batch([texts[i] for i in chunk], [limit] * len(chunk))]
            shape = self.plan.snap(len(rows), max(map(len, rows)))
            batch = Batch.from_token_ids(rows, shape, self.pad_id)
            spec = RowSpec("classify") if self.info.num_labels else RowSpec("embed", normalize=True)
            for i, vector in zip(chunk, self.execute(batch, [spec] * len(rows)), strict=True):
                vectors[i] = vector
        return torch.stack(vectors)

    def _cache_dir(self) -> Path | None:
        """Where compiled packages and int8 layers are stored; None when caching is off ("")."""
        cache_dir = resolve_cache_dir(self.config.compile_config.compile_cache_dir)
        return Path(cache_dir) if cache_dir else None

    def _cache_key(self, variant: str | None, *, per_thread_count: bool = True) -> str:
        """per_thread_count=True: a compiled graph's key (it says which of Ember's kernels it calls too);
        False: the int8 layers' (calibration does not depend on either)."""
        files = [p for p in self.folder.path.iterdir() if p.suffix in (".safetensors", ".bin") or p.name == "config.json"]
        return package_key(files, self.dtype, self.plan, self.info.architecture, variant,
                           per_thread_count=per_thread_count,
                           kernels=self._graph_kernels() if per_thread_count else "")

    def _graph_kernels(self) -> str:
        """Which kernels the compiled graph calls: Ember's (kernels.mode) and the float linears'."""
        return f"{kernels.mode(int8_kernels=self._uses_int_mm())},linear={self.linear_kernel}"

    def _uses_int_mm(self) -> bool:
        """Whether the int8 model (if any) runs int_mm, the kernel Ember's int8 ops (int8_ffn, int8_mm) serve."""
        return self.int8 is not None and self.int8.kernel.name == "int_mm"

    @staticmethod
    def _start_kernels(cache_dir: str, *, int8_kernels: bool) -> threading.Thread:
        """kernels.prepare in a thread (the attention kernel always; the int8 ones if asked)."""
        thread = threading.Thread(target=kernels.prepare, name="ember-kernels", daemon=True, args=(cache_dir,),
                                  kwargs={"int8_kernels": int8_kernels})
        thread.start()
        return thread

    def _await_kernels(self) -> None:
        """Wait until Ember's kernels are loaded (or known to be unavailable): the model's forward
        and its export ask them whether they run (ember/kernels)."""
        if any(thread.is_alive() for thread in self._kernels):
            start = time.perf_counter()
            for thread in self._kernels:
                thread.join()
            logger.info("waited %.2f s for Ember's kernels to build", time.perf_counter() - start)

    @property
    def attention_kernel(self) -> str:
        """What runs the encoder's attention: "ember-avx512", "ember-avx2" or "sdpa"."""
        self._await_kernels()
        return attention_kernel.mode()

    def compile(self) -> float:
        """Load the AOT-compiled encoder for the whole shape plan (building it on a cache miss);
        returns the seconds spent compiling and loading. A pending int8 calibration runs while the
        graph builds; the gate then measures the compiled int8 model."""
        self._await_kernels()
        calibrating = self._calibration_pending
        self._calibration_pending = False
        mode = self.int8
        template = mode.template(self.model) if calibrating and mode is not None else None
        per_layer = self._compiles_per_layer()
        graph = load_or_compile(self.model, self.plan, self._cache_dir(), self._cache_key(self._variant()),
                                self.pad_id, per_layer=per_layer, template=template,
                                meanwhile=(lambda: mode.calibrate(self.model)) if template is not None else None,
                                graph_constants=mode.kernel.graph_constants() if mode is not None else None)
        self._compiled = graph.run
        logger.info("encoder graph %s in %.2f s (compile %.2f s, load %.2f s)%s",
                    "loaded from cache" if graph.from_cache else "compiled", graph.compile_s + graph.load_s,
                    graph.compile_s, graph.load_s, f": {graph.path}" if graph.path else "")
        seconds = graph.compile_s + graph.load_s
        if mode is not None and mode.awaits_measure:  # calibrated meanwhile, or inherited from the rung before
            mode.measure_and_store(self.model)
            self._apply_gate()
            if self._compiled is None:  # the gate sent it to the stricter rung or back to float: compile that
                seconds += self.compile()
        return seconds

    def _compiles_per_layer(self) -> bool:
        """One compiled layer run per layer, with the embeddings eager in front: for int8 (a shorter
        first start) and for models that read segment ids (the compiled graph takes token ids and
        the mask only), unless compile_scope says otherwise; a pair model always does."""
        scope = self.config.compile_config.compile_scope
        if getattr(self.model, "uses_token_types", False):
            if scope == "model":
                logger.info("compile_scope=model: %s reads segment ids, so its layers compile (the embeddings "
                            "run in front of them)", self.info.architecture)
            return True
        return scope == "layer" or (scope == "auto" and self.quantization == "int8")

    def _variant(self) -> str | None:
        """What the compiled package's key says runs: None (float) or "int8-<kernel>"."""
        return f"int8-{self.int8.kernel.label}" if self.int8 is not None else None

    def warm_up(self) -> tuple[float, int]:
        """Run every shape of the plan once (first-call costs are paid here). Returns (seconds
        compiling, shapes run); the encoder compiled ahead of time in compile(), so 0.0."""
        # The request path around the graph has first-use costs too (the tokenizer's thread
        # pool, truncation, pooling and normalization kernels): pay them here, not on request 1.
        texts = ["warm up the tokenizer", "and its thread pool " * 4]
        self.tokenizer.encode_batch(texts, [None, 4])
        shapes = self.plan.warmup_shapes()
        specs = self._warmup_specs()
        second = self.pair_segment_id
        for shape in shapes:
            rows = [[self.pad_id] * shape[1]] * shape[0]
            spec = [specs[i % len(specs)] for i in range(shape[0])]
            types = None if second is None else [[0] * (shape[1] // 2) + [second] * (shape[1] - shape[1] // 2)] * shape[0]
            self.execute(Batch.from_token_ids(rows, shape, self.pad_id, types), spec)
        # The plan ends on its largest batch. End on a few single short texts instead, the most
        # common request, so that the state the engine is left in at ready (caches, allocator,
        # threads) is the one a stream of such requests keeps (first call 1.55 -> 1.24x the
        # median, together with the tqdm fix in LLM.encode; BENCHMARKS.md).
        small = self.plan.snap(1, min(16, self.plan.max_seq))
        for _ in range(3):
            self.execute(Batch.from_token_ids([[self.pad_id] * small[1]], small, self.pad_id), specs[:1])
        return 0.0, len(shapes)

    def _pair_segment_id(self) -> int | None:
        """The segment id of a pair's second text (BERT: 1; RoBERTa: 0), None for models that read
        no pairs. A tokenizer whose pairs name a segment the model has no embedding for is refused."""
        if not getattr(self.model, "uses_token_types", False):
            return None
        types = self.tokenizer.encode_pairs([("first text", "second text")], None)[0].token_type_ids or [0]
        if max(types) >= self.model.config.type_vocab_size:
            raise UnsupportedModelError(
                f"{self.folder.path}: tokenizer.json gives pairs segment id {max(types)}, but the model has "
                f"type_vocab_size={self.model.config.type_vocab_size}")
        return max(types)

    def _warmup_specs(self) -> list[RowSpec]:
        """One row spec per output kind the model serves, so every postprocessing path is paid for."""
        if self.info.num_labels:
            return [RowSpec(task) for task in self.info.tasks] + [RowSpec("classify", use_activation=False)]
        specs = [RowSpec("embed", normalize=True), RowSpec("embed", 2, True), RowSpec("token_embed", normalize=True)]
        return specs + [RowSpec(task, normalize=True) for task in ("sparse", "multi_vector", "hybrid")
                        if task in self.info.tasks]

    def mark_ready(self) -> None:
        self.counter.is_ready = True

    @torch.inference_mode()
    def execute(self, batch: Batch, rows: Sequence[RowSpec]) -> list[torch.Tensor]:
        """Forward one batch; returns per real row its float32 output (model/pooler.py: row_outputs)."""
        hidden = self._forward(batch)  # [batch, seq, hidden]
        n = batch.num_seqs
        return row_outputs(hidden[:n], batch.attention_mask[:n], batch.input_ids[:n], rows, self.pooler, self.heads)

    def _forward(self, batch: Batch) -> torch.Tensor:
        inputs = (batch.input_ids, batch.attention_mask)
        if batch.token_type_ids is not None and self.pair_segment_id is not None:  # only pair models read them
            inputs += (batch.token_type_ids,)
        if self._compiled is None:
            self._await_kernels()
            return self.model(*inputs)
        # The package cannot compile; the counter still watches for any compile on this path.
        with self.counter.watching():
            return self._compiled(*inputs)
