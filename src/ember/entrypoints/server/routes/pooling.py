"""POST /pooling (vLLM): the raw output of any task the model serves (GET /v1/models lists them)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from ember.engine.request import Request as EngineRequest
from ember.entrypoints.server.protocol import (
    JSONBody,
    PoolingRequest,
    PoolingResponse,
    encode_vector,
)
from ember.entrypoints.server.routes.embeddings import run_pooling, usage
from ember.entrypoints.server.state import get_state, require_api_key
from ember.outputs import SparseEmbedding

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.post("/pooling", response_model=PoolingResponse, response_class=JSONBody)
async def create_pooling(body: PoolingRequest, request: Request) -> Response:
    """task "embed": like /v1/embeddings; "token_embed": a [num_tokens, hidden] matrix per input;
    "classify": class scores per input; "score": a cross-encoder's score per [text, text] pair;
    "sparse": {indices, values, tokens}, highest weight first (sparse_top_k, sparse_threshold)."""
    model, results = await run_pooling(body, request, task=body.task)
    data = [{"object": "pooling", "index": i, "data": _data(r, body, request)} for i, r in enumerate(results)]
    return JSONBody({"object": "list", "data": data, "model": model, "usage": usage(results)})


def _data(result: EngineRequest, body: PoolingRequest, request: Request) -> Any:
    if body.task == "score":
        return float(result.output)
    if body.task == "sparse":
        sparse = SparseEmbedding.from_weights(result.output.numpy(), body.sparse_top_k, body.sparse_threshold)
        ids = sparse.indices.tolist()
        return {"indices": ids, "values": sparse.values.tolist(),
                "tokens": get_state(request).engine.tokenizer.token_strings(ids)}
    return encode_vector(result.output.numpy(), body.encoding_format)
