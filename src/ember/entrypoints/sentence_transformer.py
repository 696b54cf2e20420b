"""A drop-in for sentence-transformers inference code: `SentenceTransformer(name).encode(...)`.

Same arguments and return types as sentence-transformers for inference. Over-long inputs are
truncated to the model's max_seq_length, as sentence-transformers does. The vectors are Ember's
default's (int8 where the CPU has VNNI, at a min cosine >= 0.999 against float32); pass
dtype="float32" for sentence-transformers' float32 vectors (within 1e-5).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ember.entrypoints.llm import LLM
from ember.errors import InvalidRequestError
from ember.params import PoolingParams

_PROGRESS_MIN_SENTENCES = 1024


class SentenceTransformer:
    """Args mirror sentence-transformers; `device` must be "cpu" or None. Extra keyword arguments
    go to the engine (dtype, seed, max_num_seqs, enforce_eager, ...)."""

    def __init__(
        self,
        model_name_or_path: str | None = None,
        device: str | None = None,
        *,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
        truncate_dim: int | None = None,
        **engine_kwargs: Any,
    ) -> None:
        if device not in (None, "cpu"):
            raise InvalidRequestError(f"Ember runs on the CPU; device={device!r} is not supported", param="device")
        self.llm = LLM(model_name_or_path, **engine_kwargs)
        info = self.llm.model_info
        self.prompts = {**info.prompts, **(prompts or {})}
        self.default_prompt_name = default_prompt_name or info.default_prompt_name
        self.truncate_dim = truncate_dim
        self.max_seq_length = info.max_model_len

    def get_sentence_embedding_dimension(self) -> int:
        return self.truncate_dim or self.llm.model_info.embedding_dimension or self.llm.model_info.hidden_size

    def encode(
        self,
        sentences: str | Sequence[str],
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        output_value: str = "sentence_embedding",
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        device: str | None = None,
        normalize_embeddings: bool = False,
        truncate_dim: int | None = None,
    ) -> np.ndarray | torch.Tensor | list[torch.Tensor]:
        """Embed sentences. `batch_size` is accepted for compatibility; the engine's scheduler
        forms batches by token budget instead."""
        if output_value != "sentence_embedding":
            raise InvalidRequestError("only output_value='sentence_embedding' is supported", param="output_value")
        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        if not texts:
            return torch.empty(0) if convert_to_tensor else np.empty((0,), dtype=np.float32)
        dims = truncate_dim or self.truncate_dim
        # The prefix (this object's prompts may add to the model's) goes literally: the engine puts it in front.
        params = PoolingParams(normalize=True if normalize_embeddings else None, dimensions=dims,
                               truncate_prompt_tokens=-1, prompt=self._prompt(prompt_name, prompt))
        if show_progress_bar is None:
            show_progress_bar = len(texts) >= _PROGRESS_MIN_SENTENCES and sys.stderr.isatty()
        outputs = self.llm.embed(texts, pooling_params=params, use_tqdm=show_progress_bar)
        matrix = np.stack([o.outputs.data for o in outputs])  # [n, dims]
        if convert_to_tensor:
            result: Any = torch.from_numpy(matrix)
        elif convert_to_numpy:
            result = matrix
        else:
            result = list(torch.from_numpy(matrix))
        return result[0] if single else result

    def _prompt(self, prompt_name: str | None, prompt: str | None) -> str:
        if prompt is not None:
            return prompt
        name = prompt_name or self.default_prompt_name
        if name is None:
            return ""
        if name not in self.prompts:
            raise InvalidRequestError(
                f"prompt_name {name!r} is not defined; known prompts: {sorted(self.prompts) or 'none'}",
                param="prompt_name",
            )
        return self.prompts[name]
