"""The request family: what every prompt in the engine is, whatever its task.

    Request            id, token ids, task, status, the owner's callbacks (finish, cancel)
      PoolingRequest   embed / token_embed / classify / score: one forward, one output
        ChunkedRequest embed of an over-long text: its chunks are PoolingRequests of their own,
                       batched like any other; it finishes with their token-weighted mean
      Sequence         generate (engine/sequence.py): prefill, then one token per step
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ember.outputs import EmbeddingChunk


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    ABORTED = "aborted"


@dataclass(slots=True, eq=False)
class Request:
    """One prompt's journey through the engine. `output` (or `error`) is set when finished."""

    request_id: str
    prompt_token_ids: list[int]
    task: str
    """"generate" or a pooling task (params.POOLING_TASKS): which queue and runner call serve it."""
    status: RequestStatus = RequestStatus.WAITING
    output: Any = None
    error: BaseException | None = None
    on_finish: Callable[[Any], None] | None = field(default=None, repr=False)
    """Called on the engine thread once finished or failed (the engine loop's group counts these)."""
    is_cancelled: Callable[[], bool] | None = field(default=None, repr=False)
    """Set by the engine loop: True once the caller has gone, so the request is dropped."""

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status in (RequestStatus.FINISHED, RequestStatus.ABORTED)

    def finish(self, output: Any = None, error: BaseException | None = None) -> None:
        self.output, self.error = output, error
        self.status = RequestStatus.FINISHED if error is None else RequestStatus.ABORTED
        if self.on_finish is not None:
            self.on_finish(self)


@dataclass(slots=True, eq=False)
class PoolingRequest(Request):
    """A tokenized prompt (one text, or a pair for cross-encoders) and how its output is shaped."""

    token_type_ids: list[int] | None = None
    """Segment ids of a pair (0 for the first text, 1 for the second); None for one text."""
    dimensions: int | None = None
    normalize: bool = False
    use_activation: bool = True
    """classify/score: apply the model's activation (sigmoid or softmax) to the logits."""
    truncated: bool = False
    parent: ChunkedRequest | None = field(default=None, repr=False)
    """A chunk: the request of the text it is part of."""

    @property
    def is_chunked(self) -> bool:
        return False


@dataclass(slots=True, eq=False)
class ChunkedRequest(PoolingRequest):
    """An over-long text embedded as overlapping chunks (long_inputs="chunk"). Only its `chunks`
    enter the scheduler; when the last one finishes, `output` is their mean weighted by each
    chunk's token count (renormalized when the model normalizes), and `spans` the (start, end)
    characters each chunk covers. Not itself scheduled: its prompt_token_ids stay empty."""

    chunks: list[PoolingRequest] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)
    combine: Callable[[list[Any], list[int], bool], Any] | None = field(default=None, repr=False)
    """(chunk vectors, their token counts, normalize) -> the vector (model/pooler.py mean_of_chunks)."""
    return_chunks: bool = False
    chunk_outputs: list[Any] | None = None
    """return_chunks: each chunk's vector, in order; else None."""
    _remaining: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)

    @property
    def is_chunked(self) -> bool:
        return True

    @property
    def all_chunks_done(self) -> bool:
        return self._remaining == 0

    def prepare(self) -> list[PoolingRequest]:
        """The chunks, wired to finish this request (they share its cancellation)."""
        self._remaining = len(self.chunks)
        for chunk in self.chunks:
            chunk.parent, chunk.on_finish, chunk.is_cancelled = self, self._chunk_done, self.is_cancelled
        return self.chunks

    def _chunk_done(self, chunk: Request) -> None:
        self._remaining -= 1
        if self.is_finished:
            return  # an earlier chunk failed
        if chunk.error is not None:
            self.finish(error=chunk.error)
        elif self._remaining == 0:
            self.finish(self._combine())

    def _combine(self) -> Any:
        assert self.combine is not None
        outputs = [c.output for c in self.chunks]
        if self.return_chunks:
            self.chunk_outputs = outputs
        return self.combine(outputs, [c.num_tokens for c in self.chunks], self.normalize)


def chunks_of(request: Request) -> list[EmbeddingChunk] | None:
    """The chunks of a text embedded in chunks, for the caller (None for any other request)."""
    if not isinstance(request, ChunkedRequest):
        return None
    vectors = request.chunk_outputs or [None] * len(request.chunks)
    return [EmbeddingChunk(start, end, chunk.num_tokens, None if v is None else v.numpy())
            for (start, end), chunk, v in zip(request.spans, request.chunks, vectors)]
