"""POST /tokenize and /detokenize (vLLM), run in the tokenization pool."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from ember.engine.processor import checked_text
from ember.entrypoints.server.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    JSONBody,
    TokenizeRequest,
    TokenizeResponse,
)
from ember.entrypoints.server.state import check_model, get_state, require_api_key
from ember.errors import InvalidRequestError

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.post("/tokenize", response_model=TokenizeResponse, response_class=JSONBody)
async def tokenize(body: TokenizeRequest, request: Request) -> Response:
    """The token ids the engine would embed (special tokens included), without length checks."""
    state = get_state(request)
    check_model(state, body.model)
    tokenizer = state.engine.tokenizer
    checked_text(body.prompt, 0, param="prompt")
    tokenized = await state.engine.run_in_pool(tokenizer.encode_batch, [body.prompt], [None])
    ids = tokenized[0].token_ids
    out = {"count": len(ids), "max_model_len": state.engine.info.max_model_len, "tokens": ids}
    if body.return_token_strs:
        out["token_strs"] = tokenizer.token_strings(ids)
    return JSONBody(out)


@router.post("/detokenize", response_model=DetokenizeResponse, response_class=JSONBody)
async def detokenize(body: DetokenizeRequest, request: Request) -> Response:
    state = get_state(request)
    check_model(state, body.model)
    tokenizer = state.engine.tokenizer
    bad = next((t for t in body.tokens if not 0 <= t < tokenizer.vocab_size), None)
    if bad is not None:
        raise InvalidRequestError(f"token id {bad} is outside the vocabulary [0, {tokenizer.vocab_size})",
                                  param="tokens")
    text = await state.engine.run_in_pool(tokenizer.decode, body.tokens)
    return JSONBody({"prompt": text})
