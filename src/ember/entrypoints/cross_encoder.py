"""A drop-in for sentence-transformers' CrossEncoder inference code: `CrossEncoder(name).predict(pairs)`
and `.rank(query, documents)`, with the same arguments and return types.

As sentence-transformers does, pairs are truncated to the model's length (longest text first)
and the default activation is a sigmoid for one label and none for several. The scores are
Ember's default's (int8 where the CPU has a fast int8 kernel and the gate passes; it measures
scores); pass dtype="float32" for sentence-transformers' float32 scores (within 1e-4).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ember.entrypoints.llm import LLM
from ember.errors import InvalidRequestError
from ember.params import PoolingParams

_PROGRESS_MIN_PAIRS = 1024


class CrossEncoder:
    """Args mirror sentence-transformers; `device` must be "cpu" or None. Extra keyword arguments
    go to the engine (dtype, seed, max_num_seqs, enforce_eager, ...)."""

    def __init__(self, model_name_or_path: str, num_labels: int | None = None, max_length: int | None = None,
                 activation_fn: Callable | None = None, device: str | None = None, **engine_kwargs: Any) -> None:
        if device not in (None, "cpu"):
            raise InvalidRequestError(f"Ember runs on the CPU; device={device!r} is not supported", param="device")
        self.llm = LLM(model_name_or_path, **engine_kwargs)
        info = self.llm.model_info
        if not info.num_labels:
            raise InvalidRequestError(f"{model_name_or_path} is not a cross-encoder ({info.architecture} has no "
                                      "classification head); use ember.SentenceTransformer", param="model")
        if num_labels is not None and num_labels != info.num_labels:
            raise InvalidRequestError(f"the model has {info.num_labels} labels, not num_labels={num_labels}",
                                      param="num_labels")
        if max_length is not None and not 0 < max_length <= info.max_model_len:
            raise InvalidRequestError(f"max_length must be in [1, {info.max_model_len}], got {max_length}",
                                      param="max_length")
        self.max_length = max_length or info.max_model_len
        self.num_labels = info.num_labels
        self.activation_fn = activation_fn or self._default_activation()

    def _default_activation(self) -> Callable:
        """config.json's sentence_transformers.activation_fn (torch classes only, as
        sentence-transformers without trust_remote_code), else sigmoid for one label, else identity."""
        path = self.llm.engine.runner.folder.hf_config.get("sentence_transformers", {}).get("activation_fn")
        if isinstance(path, str) and path.startswith("torch."):
            module, _, name = path.rpartition(".")
            return getattr(importlib.import_module(module), name)()
        return torch.nn.Sigmoid() if self.num_labels == 1 else torch.nn.Identity()

    def predict(self, sentences: Sequence[Sequence[str]] | Sequence[str], batch_size: int = 32,
                show_progress_bar: bool | None = None, activation_fn: Callable | None = None,
                apply_softmax: bool | None = False, convert_to_numpy: bool = True,
                convert_to_tensor: bool = False, **kwargs: Any) -> Any:
        """Scores of (text, text) pairs: [n] for one label, [n, labels] otherwise; one pair gives
        one score. `batch_size` is accepted for compatibility (the scheduler batches by tokens)."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
        single = len(sentences) == 2 and all(isinstance(s, str) for s in sentences)
        pairs = [tuple(sentences)] if single else [tuple(p) for p in sentences]
        if any(len(p) != 2 or not all(isinstance(t, str) for t in p) for p in pairs):
            raise InvalidRequestError("predict takes (text, text) pairs", param="sentences")
        if not pairs:
            return torch.tensor([]) if convert_to_tensor else np.array([])
        if show_progress_bar is None:
            show_progress_bar = len(pairs) >= _PROGRESS_MIN_PAIRS and sys.stderr.isatty()
        params = PoolingParams(truncate_prompt_tokens=self.max_length, use_activation=False)
        outputs = self.llm.encode(pairs, pooling_task="classify", pooling_params=params, use_tqdm=show_progress_bar)
        scores = torch.tensor([o.outputs.probs for o in outputs])  # logits [n, labels]
        scores = (activation_fn or self.activation_fn)(scores)
        if self.num_labels == 1:
            scores = scores.squeeze(-1)
        if apply_softmax and scores.ndim > 1:
            scores = torch.softmax(scores, dim=1)
        result: Any = scores if convert_to_tensor else scores.numpy() if convert_to_numpy else list(scores)
        return result[0] if single else result

    def rank(self, query: str, documents: Sequence[str], top_k: int | None = None, return_documents: bool = False,
             batch_size: int = 32, show_progress_bar: bool | None = None, activation_fn: Callable | None = None,
             **kwargs: Any) -> list[dict[str, Any]]:
        """Documents by decreasing score: [{"corpus_id", "score"(, "text")}], the best top_k."""
        if self.num_labels != 1:
            raise InvalidRequestError(f"rank needs a model with one label; this one has {self.num_labels}",
                                      param="model")
        scores = self.predict([(query, d) for d in documents], batch_size=batch_size,
                              show_progress_bar=show_progress_bar, activation_fn=activation_fn, convert_to_numpy=True)
        results = [{"corpus_id": i, "score": float(s)} for i, s in enumerate(np.atleast_1d(scores))]
        for r in results:
            if return_documents:
                r["text"] = documents[r["corpus_id"]]
        return sorted(results, key=lambda r: r["score"], reverse=True)[:top_k]
