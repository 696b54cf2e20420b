"""One generation request's state (the `generate` member of the request family): its tokens, its
cache blocks, and why it finished."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ember.engine.request import Request, RequestStatus
from ember.params import SamplingParams


@dataclass(slots=True, eq=False)
class Sequence(Request):
    """A prompt to continue (task "generate") and what has been generated for it so far."""

    prompt: str | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int = 0
    """max_tokens after checking the context length (never None)."""
    generator: Any = None
    """A private torch.Generator when the request has a seed; None: the engine's generator."""
    output_token_ids: list[int] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    num_preemptions: int = 0
    on_update: Callable[[Sequence], None] | None = field(default=None, repr=False)
    """Called on the engine thread after every new token (streaming)."""

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    def stop(self, reason: str, stop_reason: int | str | None = None) -> None:
        """Mark why generation ended; the engine then calls finish()."""
        self.status = RequestStatus.FINISHED
        self.finish_reason, self.stop_reason = reason, stop_reason

    def finish(self, output: Any = None, error: BaseException | None = None) -> None:
        """Done (or failed with `error`): notify the owner."""
        self.error = error
        if error is not None:
            self.status, self.finish_reason = RequestStatus.ABORTED, "error"
        else:
            self.status = RequestStatus.FINISHED
        if self.on_finish is not None:
            self.on_finish(self)
