"""ModelRunner: owns the model, the tokenizer and the compiled graph; runs one batch at a time."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ember.config import EngineConfig, ModelInfo
from ember.model.loader import ModelFolder, build_model
from ember.model.pooler import Pooler, postprocess
from ember.model.sources import resolve_model_path
from ember.runner.batch import Batch
from ember.runner.compile import (
    CompileCounter,
    ShapePlan,
    compile_model,
    default_cache_dir,
    inductor_settings,
    is_recompile_refusal,
)
from ember.runner.device import resolve_dtype
from ember.tokenizer import TextTokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RowRequest:
    """What the runner needs of one row: its pooling task and postprocessing."""

    task: str
    dimensions: int | None
    normalize: bool


class ModelRunner:
    """Loads the model and runs batches. Called only by the worker and the engine loop."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        mc = config.model_config
        self.folder = ModelFolder.read(resolve_model_path(mc.model))
        self.dtype = resolve_dtype(mc.dtype)
        self.model = build_model(self.folder, self.dtype)
        self.info = self._model_info()
        self.tokenizer = TextTokenizer(self.folder.path, do_lower_case=self.folder.st.do_lower_case)
        self.pooler = Pooler(self.info.pooling_type)
        self.pad_id = self.model.config.pad_token_id
        sc = config.scheduler_config
        self.plan = ShapePlan(sc.max_num_seqs, self.info.max_model_len, sc.max_num_batched_tokens)
        self.counter = CompileCounter()
        self._compiled = None
        self.num_fallbacks = 0

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

    def compile(self) -> float:
        """Wrap the model in torch.compile (lazy); the warm-up that follows compiles it."""
        self._compiled = compile_model(self.model)
        return 0.0

    def warm_up(self) -> tuple[float, int]:
        """Run every shape of the plan once; returns (seconds compiling, shapes warmed)."""
        cc = self.config.compile_config
        cache_dir = cc.compile_cache_dir if cc.compile_cache_dir is not None else str(default_cache_dir())
        compile_s = 0.0
        shapes = self.plan.warmup_shapes()
        with inductor_settings(cache_dir):
            for i, shape in enumerate(shapes):
                rows = [[self.pad_id] * shape[1]] * shape[0]
                start = time.perf_counter()
                self.execute(Batch.from_token_ids(rows, shape, self.pad_id), [RowRequest("embed", None, False)] * shape[0])
                if i == 0 and self._compiled is not None:
                    compile_s = time.perf_counter() - start
        return compile_s, len(shapes)

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
        if not self.counter.is_ready:
            with self.counter.watching():
                return self._compiled(batch.input_ids, batch.attention_mask)
        try:
            with self.counter.watching(), torch.compiler.set_stance("fail_on_recompile"):
                return self._compiled(batch.input_ids, batch.attention_mask)
        except RuntimeError as exc:
            if not is_recompile_refusal(exc):
                raise
            self.counter.count_refused()
            self.num_fallbacks += 1
            logger.error("shape %s would recompile after ready; served eagerly instead", batch.shape)
            return self.model(batch.input_ids, batch.attention_mask)
