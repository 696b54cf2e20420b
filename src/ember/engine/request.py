"""One prompt's journey through the engine."""

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


@dataclass(slots=True)
class Request:
    """A tokenized prompt with its pooling settings. `output` is set when finished."""

    request_id: str
    prompt_token_ids: list[int]
    task: str = "embed"
    dimensions: int | None = None
    normalize: bool = False
    truncated: bool = False
    status: RequestStatus = RequestStatus.WAITING
    output: Any = None
    error: BaseException | None = None
    on_finish: Callable[[Request], None] | None = field(default=None, repr=False)
    is_cancelled: Callable[[], bool] | None = field(default=None, repr=False)
    """Set by the server: True once the caller has gone, so the request is dropped."""

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
