"""What runs on the encoder's hidden states after the compiled graph, per output kind.

    classifier     logits from the [CLS] token (cross-encoders, classifiers)
    dense          sentence-transformers Dense modules on the pooled vector
    sparse         lexical weights per vocabulary token: SPLADE (a masked-LM head) or bge-m3's
                   `sparse_linear.pt` (one weight per token)
    multi_vector   ColBERT vectors per token: bge-m3's `colbert_linear.pt`

All run eagerly in float32 on the real tokens of a row, outside the compiled (and int8) graph:
they are a small part of a forward, and keeping them out of the graph lets one compiled
package serve every output kind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ember.errors import CorruptModelError

logger = logging.getLogger(__name__)

M3_SPARSE_FILE = "sparse_linear.pt"
M3_COLBERT_FILE = "colbert_linear.pt"


class SpladeWeights(nn.Module):
    """SPLADE: max over the tokens of log(1 + relu(masked-LM logit)), per vocabulary token."""

    def __init__(self, mlm_head: nn.Module) -> None:
        super().__init__()
        self.mlm_head = mlm_head

    def forward(self, hidden: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """[tokens, hidden] + [tokens] -> [vocab]."""
        logits = self.mlm_head(hidden.to(self.mlm_head.decoder.weight.dtype)).float()
        return torch.log1p(torch.relu(logits)).amax(dim=0)


class LexicalWeights(nn.Module):
    """bge-m3's sparse output: relu(linear(hidden)) is each token's weight; a vocabulary token
    weighs the most of its occurrences; the special tokens (cls, eos, pad, unk) weigh 0."""

    def __init__(self, hidden_size: int, vocab_size: int, unused_ids: tuple[int, ...]) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        self.vocab_size = vocab_size
        self.unused_ids = unused_ids

    def forward(self, hidden: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """[tokens, hidden] + [tokens] -> [vocab]."""
        weights = torch.relu(self.linear(hidden.float())).squeeze(-1)
        out = torch.zeros(self.vocab_size, dtype=torch.float32)
        out.scatter_reduce_(0, token_ids.long(), weights, reduce="amax", include_self=True)
        out[list(self.unused_ids)] = 0.0
        return out


class ColbertVectors(nn.Module):
    """bge-m3's multi-vector output: linear(hidden) of every token after the first ([CLS]),
    L2-normalized when the model normalizes."""

    def __init__(self, hidden_size: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, out_features)

    def forward(self, hidden: torch.Tensor, normalize: bool) -> torch.Tensor:
        """[tokens, hidden] -> [tokens - 1, out_features]."""
        vectors = self.linear(hidden[1:].float())
        return F.normalize(vectors, dim=-1) if normalize else vectors


@dataclass(slots=True)
class OutputHeads:
    """The heads of one loaded model (None where it has none)."""

    classifier: nn.Module | None = None
    multi_label: bool = False
    """The classifier's labels are independent (sigmoid per label)."""
    dense: nn.Module | None = None
    sparse: nn.Module | None = None
    multi_vector: ColbertVectors | None = None


def load_m3_heads(folder: Path, hidden_size: int, vocab_size: int, unused_ids: tuple[int, ...]
                  ) -> tuple[LexicalWeights | None, ColbertVectors | None]:
    """bge-m3's `sparse_linear.pt` and `colbert_linear.pt` in `folder`, loaded as tensors only
    (torch.load weights_only: a pickle that would run code is refused); (None, None) without them."""
    sparse_file, colbert_file = folder / M3_SPARSE_FILE, folder / M3_COLBERT_FILE
    if not sparse_file.is_file() and not colbert_file.is_file():
        return None, None
    sparse = colbert = None
    if sparse_file.is_file():
        sparse = LexicalWeights(hidden_size, vocab_size, unused_ids)
        _load_linear(sparse.linear, sparse_file, (1, hidden_size))
    if colbert_file.is_file():
        state = _read_state(colbert_file)
        weight = state.get("weight")
        if weight is None or weight.ndim != 2 or weight.shape[1] != hidden_size:
            raise CorruptModelError(f"{colbert_file} must hold a linear 'weight' of shape [dim, {hidden_size}], got "
                                    f"{None if weight is None else tuple(weight.shape)}")
        colbert = ColbertVectors(hidden_size, weight.shape[0])
        _load_linear(colbert.linear, colbert_file, tuple(weight.shape))
    logger.info("bge-m3 heads: %s", ", ".join(p.name for p in (sparse_file, colbert_file) if p.is_file()))
    return sparse, colbert


def _read_state(file: Path) -> dict[str, torch.Tensor]:
    import pickle

    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CorruptModelError(f"{file} holds Python objects besides tensors; Ember loads only tensors") from exc
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise CorruptModelError(f"{file} is not a readable PyTorch checkpoint (truncated or damaged?): {exc}") from exc
    if not isinstance(state, dict):
        raise CorruptModelError(f"{file} must hold a state dict of a linear layer (weight, bias)")
    return state


def _load_linear(linear: nn.Linear, file: Path, shape: tuple[int, ...]) -> None:
    state = _read_state(file)
    try:
        linear.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise CorruptModelError(f"{file} does not fit a linear layer of shape {list(shape)}: {exc}") from exc
    linear.eval().requires_grad_(False)



M3_UNUSED_ROLES = ("cls_token", "eos_token", "pad_token", "unk_token")
"""The special tokens whose bge-m3 lexical weight is 0 (as FlagEmbedding publishes it)."""


def special_token_ids(folder: Path, roles: tuple[str, ...], token_id: Callable[[str], int | None]) -> tuple[int, ...]:
    """The ids of the special tokens that tokenizer_config.json / special_tokens_map.json name for
    `roles` (a role's value is the token, or {"content": token})."""
    from ember.model.st_modules import read_json_object

    named: dict[str, object] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if (folder / name).is_file():
            named.update(read_json_object(folder / name))
    ids = []
    for role in roles:
        value = named.get(role)
        token = value.get("content") if isinstance(value, dict) else value
        found = token_id(token) if isinstance(token, str) else None
        if found is not None:
            ids.append(found)
    return tuple(sorted(set(ids)))
