"""Scoring and reranking on top of the one request path: how text pairs become requests, and how
the finished requests become scores.

    cross-encoder (task "score"):  one request per pair, [CLS] a [SEP] b [SEP] -> the head's score
    bi-encoder   (task "embed"):   one request per distinct text -> cosine of the two vectors

The offline API and the server both plan with plan_scores(), run the plan's requests through
their engine, and read the scores back with ScorePlan.scores().
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ember.config import ModelInfo
from ember.errors import InvalidRequestError
from ember.params import PoolingParams


@dataclass(slots=True)
class ScorePlan:
    task: str
    """"score" (a cross-encoder reads each pair) or "embed" (a bi-encoder embeds each text)."""
    prompts: list[Any]
    params: PoolingParams
    pair_rows: list[tuple[int, int]] = field(default_factory=list)
    """Bi-encoders: per pair, the rows of its two texts in `prompts`."""

    def scores(self, outputs: Sequence[torch.Tensor]) -> list[float]:
        """The score of each pair, in pair order, from the outputs of `prompts` in order."""
        if self.task == "score":
            return [float(o) for o in outputs]
        vectors = torch.stack(list(outputs)).float()
        a = vectors[[i for i, _ in self.pair_rows]]
        b = vectors[[j for _, j in self.pair_rows]]
        return torch.nn.functional.cosine_similarity(a, b, dim=-1).tolist()


def pair_up(text_1: Any, text_2: Any) -> list[tuple[str, str]]:
    """vLLM's score inputs: 1:1 (two strings), 1:N (a string and a list) or N:N (lists of one length)."""
    first, second = _texts(text_1, "text_1"), _texts(text_2, "text_2")
    if len(first) == 1:
        first = first * len(second)
    if len(first) != len(second):
        raise InvalidRequestError(
            f"text_1 has {len(first)} texts and text_2 has {len(second)}; give one text_1 for many text_2, or "
            "lists of the same length", param="text_2")
    return list(zip(first, second))


def _texts(value: Any, param: str) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
        raise InvalidRequestError(f"{param} must be a string or a list of strings", param=param)
    if not texts:
        raise InvalidRequestError(f"{param} must not be empty", param=param)
    empty = next((i for i, t in enumerate(texts) if not t), None)
    if empty is not None:
        raise InvalidRequestError(f"{param}[{empty}] must not be an empty string" if len(texts) > 1 else
                                  f"{param} must not be an empty string", param=param)
    return list(texts)


def plan_scores(info: ModelInfo, pairs: list[tuple[str, str]], params: PoolingParams) -> ScorePlan:
    """The requests that score `pairs` on this model (a cross-encoder, or an embedding model)."""
    info.check_task("score")
    if info.num_labels:
        return ScorePlan("score", list(pairs), params)
    if params.use_activation is not None:
        raise InvalidRequestError("use_activation applies to cross-encoders; this model scores by cosine",
                                  param="use_activation")
    rows: dict[str, int] = {}
    for a, b in pairs:
        rows.setdefault(a, len(rows))
        rows.setdefault(b, len(rows))
    embed = PoolingParams(normalize=True, truncate_prompt_tokens=params.truncate_prompt_tokens,
                          truncation_side=params.truncation_side)
    return ScorePlan("embed", list(rows), embed, [(rows[a], rows[b]) for a, b in pairs])


@dataclass(frozen=True, slots=True)
class RankedDocument:
    index: int
    """The document's position in the request."""
    relevance_score: float
    document: str


def check_top_n(top_n: int | None) -> None:
    """top_n is None or a non-negative integer (0, like None, keeps every document, as vLLM)."""
    if top_n is not None and (not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 0):
        raise InvalidRequestError(f"top_n must be a non-negative integer, got {top_n!r}", param="top_n")


def rank(documents: Sequence[str], scores: Sequence[float], top_n: int | None) -> list[RankedDocument]:
    """Documents by decreasing score (ties keep their input order), the first top_n (None or 0: all)."""
    check_top_n(top_n)
    order = sorted(range(len(documents)), key=lambda i: (-scores[i], i))
    return [RankedDocument(i, float(scores[i]), documents[i]) for i in order[:top_n or None]]
