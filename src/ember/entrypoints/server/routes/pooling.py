"""POST /pooling (vLLM): the raw output of any task the model serves (GET /v1/models lists them)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from ember.entrypoints.server.protocol import (
    JSONBody,
    PoolingRequest,
    PoolingResponse,
    encode_vector,
)
from ember.entrypoints.server.routes.embeddings import run_pooling, usage
from ember.entrypoints.server.state import require_api_key

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.post("/pooling", response_model=PoolingResponse, response_class=JSONBody)
async def create_pooling(body: PoolingRequest, request: Request) -> Response:
    """task "embed": like /v1/embeddings; "token_embed": a [num_tokens, hidden] matrix per input;
    "classify": class scores per input; "score": a cross-encoder's score per [text, text] pair."""
    model, results = await run_pooling(body, request, task=body.task)
    data = [
        {"object": "pooling", "index": i,
         "data": float(r.output) if body.task == "score" else encode_vector(r.output.numpy(), body.encoding_format)}
        for i, r in enumerate(results)
    ]
    return JSONBody({"object": "list", "data": data, "model": model, "usage": usage(results)})
