"""Generation for asyncio callers (the HTTP server), through the AsyncEngine's engine thread.

    prepare(): validate + tokenize in the pool (nothing queued, so errors are clean 400s)
    run():     submit the sequences as one group; per-token snapshots reach `on_token` on the event loop
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ember.engine.async_engine import AsyncEngine, _resolve, _wait
from ember.engine.engine_loop import RequestGroup
from ember.engine.sequence import Sequence
from ember.errors import InvalidRequestError
from ember.params import SamplingParams


@dataclass(frozen=True, slots=True)
class TokenSnapshot:
    """A sequence's state after one step, copied on the engine thread (streaming reads this only)."""

    index: int
    text: str
    num_tokens: int
    finish_reason: str | None


def chat_settings(engine: AsyncEngine) -> dict[str, Any]:
    """The decoder's tokenizer_config (chat_template, bos_token, eos_token); InvalidRequestError otherwise."""
    ready = engine.loop.ready_engine()
    if ready.generation is None:
        raise InvalidRequestError(f"model {ready.info.architecture} does not generate text", param="model")
    return ready.runner.tokenizer_config  # type: ignore[union-attr]


async def prepare(engine: AsyncEngine, prompts: list[str | list[int]], params: SamplingParams) -> list[Sequence]:
    """Validated, tokenized sequences; raises InvalidRequestError before anything is queued."""
    chat_settings(engine)
    generation = engine.loop.ready_engine().generation
    assert generation is not None
    return await engine.run_in_pool(generation.make_sequences, prompts, [params] * len(prompts))


async def run(engine: AsyncEngine, seqs: list[Sequence], *, is_disconnected: Callable[[], Any] | None = None,
              on_token: Callable[[TokenSnapshot], None] | None = None) -> list[Sequence]:
    """Generate; returns the finished sequences in order. Raises ClientGoneError if the caller left."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[list[Sequence]] = loop.create_future()
    if on_token is not None:
        for i, seq in enumerate(seqs):
            seq.on_update = _snapshotter(loop, on_token, i)
    group = RequestGroup(seqs, on_done=lambda done: loop.call_soon_threadsafe(_resolve, future, done))  # type: ignore[arg-type]
    engine.loop.submit(group)
    return await _wait(group, future, is_disconnected)


def _snapshotter(loop: asyncio.AbstractEventLoop, on_token: Callable[[TokenSnapshot], None],
                 index: int) -> Callable[[Sequence], None]:
    def on_update(seq: Sequence) -> None:
        snap = TokenSnapshot(index, seq.text, len(seq.output_token_ids), seq.finish_reason)
        loop.call_soon_threadsafe(on_token, snap)

    return on_update
