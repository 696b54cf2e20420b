"""POST /v1/completions and /v1/chat/completions (OpenAI), with SSE streaming."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal, Union

import orjson
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr
from starlette.responses import Response, StreamingResponse

from ember.engine.async_engine import AsyncEngine, TokenSnapshot
from ember.engine.sequence import Sequence
from ember.entrypoints.chat import render_chat
from ember.entrypoints.server.protocol import JSONBody
from ember.entrypoints.server.state import check_model, get_state, require_api_key
from ember.errors import InvalidRequestError
from ember.params import SamplingParams

router = APIRouter(dependencies=[Depends(require_api_key)])
PromptInput = Union[StrictStr, list[StrictStr], list[StrictInt], list[list[StrictInt]]]


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: StrictInt | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: StrictInt = 0
    min_tokens: StrictInt = 0
    n: StrictInt = 1
    stop: StrictStr | list[StrictStr] | None = None
    stop_token_ids: list[StrictInt] | None = None
    ignore_eos: bool = False
    seed: StrictInt | None = None
    stream: bool = False
    user: str | None = None

    def sampling_params(self, default_max_tokens: int | None) -> SamplingParams:
        if self.n != 1:
            raise InvalidRequestError(f"only n=1 is supported, got {self.n}", param="n")
        max_tokens = self.max_tokens if self.max_tokens is not None else default_max_tokens
        return SamplingParams(max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                              min_tokens=self.min_tokens, stop=self.stop, stop_token_ids=self.stop_token_ids,
                              ignore_eos=self.ignore_eos, seed=self.seed)


class CompletionRequest(_Sampling):
    prompt: PromptInput
    echo: Literal[False] = False


class ChatMessage(BaseModel):
    role: str
    content: str


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage]
    max_completion_tokens: StrictInt | None = None


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    prompts: list[Any] = [body.prompt] if isinstance(body.prompt, str) or _is_ids(body.prompt) else list(body.prompt)
    if not prompts or any(p in ("", []) for p in prompts):
        raise InvalidRequestError("'prompt' must not be empty", param="prompt")
    return await _serve(request, body, prompts, body.sampling_params(16), chat=False)


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    settings = get_state(request).engine.tokenizer_config
    prompt = render_chat(settings, [m.model_dump() for m in body.messages])
    params = body.sampling_params(None)
    if body.max_completion_tokens is not None and body.max_tokens is None:
        params.max_tokens = body.max_completion_tokens
    return await _serve(request, body, [prompt], params, chat=True)


def _is_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(x, int) for x in value)


async def _serve(request: Request, body: _Sampling, prompts: list[Any], params: SamplingParams, *,
                 chat: bool) -> Response:
    state = get_state(request)
    model = check_model(state, body.model)
    seqs = await state.engine.make_requests("generate", prompts, params)
    head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}
    if body.stream:
        return StreamingResponse(_stream(state.engine, seqs, head, chat), media_type="text/event-stream")
    done = await state.engine.run(seqs, is_disconnected=_disconnect_waiter(request))
    choices = [_choice(i, s.text, s.finish_reason, chat) for i, s in enumerate(done)]
    prompt_tokens = sum(len(s.prompt_token_ids) for s in done)
    completion_tokens = sum(len(s.output_token_ids) for s in done)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}
    obj = "chat.completion" if chat else "text_completion"
    return JSONBody({**head, "object": obj, "choices": choices, "usage": usage})


def _choice(index: int, text: str, finish_reason: str | None, chat: bool) -> dict[str, Any]:
    if chat:
        return {"index": index, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}


async def _stream(engine: AsyncEngine, seqs: list[Sequence], head: dict[str, Any], chat: bool) -> AsyncIterator[bytes]:
    """SSE chunks of new text; text that could still turn into a stop string is held back."""
    queue: asyncio.Queue[TokenSnapshot | None] = asyncio.Queue()
    task = asyncio.ensure_future(engine.run(seqs, on_token=queue.put_nowait))
    task.add_done_callback(lambda _: queue.put_nowait(None))
    sent = [""] * len(seqs)
    hold = max((len(s) for s in seqs[0].params.stop_strings), default=1) - 1
    obj = "chat.completion.chunk" if chat else "text_completion"
    if chat:
        yield _event({**head, "object": obj, "choices": [
            {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None} for i in range(len(seqs))]})
    try:
        while (snap := await queue.get()) is not None:
            text = snap.text if snap.finish_reason else snap.text[: max(len(snap.text) - hold, 0)].rstrip("\ufffd")
            delta, sent[snap.index] = text[len(sent[snap.index]):], text
            if delta or snap.finish_reason:
                choice = ({"index": snap.index, "delta": {"content": delta}, "finish_reason": snap.finish_reason}
                          if chat else _choice(snap.index, delta, snap.finish_reason, False))
                yield _event({**head, "object": obj, "choices": [choice]})
        await task
    except Exception as exc:  # the status line is sent already: report in the stream, as OpenAI does
        yield _event({"error": {"message": str(exc), "type": "server_error", "param": None, "code": None}})
    finally:
        task.cancel()
    yield b"data: [DONE]\n\n"


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def _disconnect_waiter(request: Request) -> Any:
    async def wait_for_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return wait_for_disconnect
