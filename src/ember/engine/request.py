"""The request family: what every prompt in the engine is, whatever its task.

    Request            id, token ids, task, status, the owner's callbacks (finish, cancel)
      PoolingRequest   embed / token_embed / classify / score: one forward, one output
      Sequence         generate (engine/sequence.py): prefill, then one token per step
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


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
