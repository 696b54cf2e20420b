"""DecoderModelRunner: a Llama-family decoder with a paged KV cache; prefill, decode, LAST pooling.

Two compiled graphs, each of ONE decoder layer (every layer shares it, so compiling costs one
layer, not the depth of the model; embeddings, norm and LM head run eagerly around it):
- prefill_layer, used by model.prefill(input_ids [batch, seq], last_index [batch]): compiled and
  warmed by profile_run(), the worker's memory-profiling step, whose last shape is the maximum
  token batch;
- decode_layer, used by model.decode(input_ids [batch], positions [batch], kv_cache, block_tables
  [batch, blocks]): compiled and warmed by warm_up(), after the cache exists.
The graphs never write the cache; this runner stores the keys/values they return.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ember.config import EngineConfig
from ember.model.gguf import find_gguf, tokenizer_folder
from ember.model.heads import OutputHeads
from ember.model.info import describe_model
from ember.model.llama import decode_layer, prefill_layer
from ember.model.loader import ModelFolder, build_model, read_json
from ember.model.pooler import Pooler, RowSpec, row_outputs
from ember.model.sources import resolve_model_path
from ember.runner.batch import Batch
from ember.runner.compile import (
    MIN_DIM,
    CompileCounter,
    inductor_settings,
    is_recompile_refusal,
    resolve_cache_dir,
)
from ember.runner.decoder_plan import DecoderShapePlan
from ember.runner.device import resolve_dtype
from ember.runner.kv_cache import NULL_BLOCK, KVCacheSpec
from ember.tokenizer import TextTokenizer

logger = logging.getLogger(__name__)

DECODER_BATCH_TOKENS = 8192
"""Default padded-token budget of a prefill batch."""

DEFAULT_MAX_MODEL_LEN = 2048
"""Cap of the default context on CPU (the KV cache and the profiling run scale with it)."""


class DecoderModelRunner:
    """Loads a decoder and runs prefill/decode/embedding batches. Called by the worker and engine."""

    def __init__(self, config: EngineConfig, folder: ModelFolder | None = None) -> None:
        self.config = config
        mc, sc = config.model_config, config.scheduler_config
        self.folder = folder or ModelFolder.read(resolve_model_path(mc.model))
        self.dtype = resolve_dtype(mc.dtype)
        self.quantization: str | None = None
        """Decoders always run float (an explicit int8 is refused at load)."""
        self.quantization_cosine: float | None = None
        self.int8_kernel: str | None = None
        self.attention_kernel: str | None = None
        """Ember's encoder attention kernel is not a decoder's: its attention reads the KV cache."""
        self.linear_kernel: str | None = None
        """The decoder's linears are torch's own (runner/packed_linear.py serves the encoders)."""
        self.model = build_model(self.folder, self.dtype)
        cfg = self.model.config
        gguf_file = find_gguf(self.folder.path)
        tokenizer_dir = tokenizer_folder(gguf_file) if gguf_file else self.folder.path
        self.tokenizer = TextTokenizer(tokenizer_dir)
        self.info = describe_model(self.folder, cfg, mc, self.tokenizer.vocab_size, generative=True,
                                   default_max_len=DEFAULT_MAX_MODEL_LEN)
        self.tokenizer_config = _read_optional_json(tokenizer_dir / "tokenizer_config.json")
        """chat_template, bos_token, eos_token (the chat routes render the template with them)."""
        self.pooler = Pooler("LAST")
        self.pad_id = cfg.pad_token_id
        self.eos_token_ids = cfg.eos_token_ids
        max_len = self.info.max_model_len
        self.kv_spec = KVCacheSpec(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim,
                                   config.cache_config.block_size, self.dtype, max_len)
        max_tokens = max(sc.max_num_batched_tokens or DECODER_BATCH_TOKENS, max_len)
        self.plan = DecoderShapePlan(sc.max_num_seqs, max_len, max_tokens, self.kv_spec.blocks_per_seq)
        self.counter = CompileCounter()
        self.kv_cache: torch.Tensor | None = None
        self._graphs: dict[str, Callable[..., Any] | None] = {"prefill": None, "decode": None}
        self.num_fallbacks = 0

    def _cache_dir(self) -> str:
        return resolve_cache_dir(self.config.compile_config.compile_cache_dir)

    @torch.inference_mode()
    def profile_run(self) -> tuple[float, int]:
        """Compile (unless enforce_eager) and warm the prefill graph; the last shape run is the
        maximum token batch, so resident memory afterwards includes its peak. Returns (seconds
        compiling, shapes run)."""
        if not self.config.compile_config.enforce_eager:
            self._graphs["prefill"] = torch.compile(prefill_layer, fullgraph=True)
        compile_s, shapes = 0.0, self.plan.prefill_shapes()
        with inductor_settings(self._cache_dir()):
            for i, (rows, seq) in enumerate(shapes):
                ids = torch.full((rows, seq), self.pad_id, dtype=torch.int64)
                last = torch.full((rows,), seq - 1, dtype=torch.int64)
                start = time.perf_counter()
                self._run("prefill", ids, last)
                if i < 2 and self._graphs["prefill"] is not None:  # static, then dynamic compile
                    compile_s += time.perf_counter() - start
        return compile_s, len(shapes)

    def init_kv_cache(self, num_blocks: int) -> None:
        self.kv_cache = self.kv_spec.allocate(num_blocks)

    @property
    def num_kv_blocks(self) -> int:
        return 0 if self.kv_cache is None else self.kv_cache.shape[2]

    def compile(self) -> float:
        """Wrap one decode layer in torch.compile (lazy); warm_up() compiles it."""
        self._graphs["decode"] = torch.compile(decode_layer, fullgraph=True)
        return 0.0

    @torch.inference_mode()
    def warm_up(self) -> tuple[float, int]:
        """Run every decode shape once against the (empty) cache; returns (seconds compiling, shapes)."""
        assert self.kv_cache is not None, "init_kv_cache() comes before warm_up()"
        compile_s, shapes = 0.0, self.plan.warmup_shapes()
        with inductor_settings(self._cache_dir()):
            for i, (rows, blocks) in enumerate(shapes):
                ids = torch.full((rows,), self.pad_id, dtype=torch.int64)
                positions = torch.zeros(rows, dtype=torch.int64)
                tables = torch.full((rows, blocks), NULL_BLOCK, dtype=torch.int64)
                start = time.perf_counter()
                self._run("decode", ids, positions, self.kv_cache, tables)
                if i < 2 and self._graphs["decode"] is not None:
                    compile_s += time.perf_counter() - start
        return compile_s, len(shapes)

    def mark_ready(self) -> None:
        self.counter.is_ready = True

    @torch.inference_mode()
    def prefill(self, prompts: Sequence[Sequence[int]], block_tables: Sequence[Sequence[int]]) -> torch.Tensor:
        """Run fresh prompts, store their keys/values in their blocks; returns last-token logits [n, vocab]."""
        n = len(prompts)
        shape = self.plan.snap(n, max(map(len, prompts)))
        batch = Batch.from_token_ids(prompts, shape, self.pad_id)
        last = torch.zeros(shape[0], dtype=torch.int64)
        last[:n] = torch.tensor([len(p) - 1 for p in prompts])
        logits, _, kv = self._run("prefill", batch.input_ids, last)  # kv [layers, 2, batch, seq, kv_heads, dim]
        rows = np.concatenate([np.full(len(p), i) for i, p in enumerate(prompts)])
        positions = np.concatenate([np.arange(len(p)) for p in prompts])
        self._store(kv[:, :, torch.from_numpy(rows), torch.from_numpy(positions)], block_tables, rows, positions)
        return logits[:n]

    @torch.inference_mode()
    def decode(self, token_ids: Sequence[int], positions: Sequence[int],
               block_tables: Sequence[Sequence[int]]) -> torch.Tensor:
        """One token per sequence at `positions`; stores its keys/values; returns logits [n, vocab]."""
        n = len(token_ids)
        rows = max(n, MIN_DIM)
        blocks = max(MIN_DIM, max(map(len, block_tables)))
        ids = torch.full((rows,), self.pad_id, dtype=torch.int64)
        ids[:n] = torch.tensor(token_ids)
        pos = torch.zeros(rows, dtype=torch.int64)
        pos[:n] = torch.tensor(positions)
        tables = torch.full((rows, blocks), NULL_BLOCK, dtype=torch.int64)
        for i, table in enumerate(block_tables):
            tables[i, : len(table)] = torch.tensor(table)
        logits, kv = self._run("decode", ids, pos, self.kv_cache, tables)  # kv [layers, 2, batch, kv_heads, dim]
        self._store(kv[:, :, :n], block_tables, np.arange(n), np.asarray(positions))
        return logits[:n]

    def _store(self, kv: torch.Tensor, block_tables: Sequence[Sequence[int]], rows: np.ndarray,
               positions: np.ndarray) -> None:
        """Write kv [layers, 2, tokens, kv_heads, dim] at (row, position) slots of the paged cache."""
        assert self.kv_cache is not None
        size = self.kv_spec.block_size
        slots = [block_tables[r][p // size] * size + p % size for r, p in zip(rows.tolist(), positions.tolist())]
        flat = self.kv_cache.view(*self.kv_cache.shape[:2], -1, *self.kv_cache.shape[4:])
        flat.index_copy_(2, torch.tensor(slots, dtype=torch.int64), kv.to(self.kv_cache.dtype))

    @torch.inference_mode()
    def execute(self, batch: Batch, rows: Sequence[RowSpec]) -> list[torch.Tensor]:
        """Embedding batches (the runner contract): LAST-token vectors, postprocessed per row."""
        n = batch.num_seqs
        last = batch.attention_mask.sum(dim=1) - 1
        # clone: inputs made outside inference mode carry another dispatch key, which would recompile
        _, hidden, _ = self._run("prefill", batch.input_ids.clone(), last)  # [batch, seq, hidden]
        return row_outputs(hidden[:n], batch.attention_mask[:n], batch.input_ids[:n], rows, self.pooler, OutputHeads())

    def _run(self, name: str, *args: torch.Tensor) -> Any:
        """Run with the compiled layer; after ready, a call that would recompile is counted and run eagerly."""
        compiled, step = self._graphs[name], getattr(self.model, name)
        if compiled is None:
            return step(*args)
        if not self.counter.is_ready:
            with self.counter.watching():
                return step(*args, layer_fn=compiled)
        try:
            with self.counter.watching(), torch.compiler.set_stance("fail_on_recompile"):
                return step(*args, layer_fn=compiled)
        except RuntimeError as exc:
            if not is_recompile_refusal(exc):
                raise
            self.counter.count_refused()
            self.num_fallbacks += 1
            logger.error("%s shapes %s would recompile after ready; served eagerly instead", name,
                         [tuple(a.shape) for a in args])
            return step(*args)


def _read_optional_json(path: Path) -> dict[str, Any]:
    return read_json(path) if path.is_file() else {}
