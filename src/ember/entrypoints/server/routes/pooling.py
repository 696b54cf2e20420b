"""POST /pooling (vLLM): the raw output of any task the model serves (GET /v1/models lists them)."""

from __future__ import annotations

from typing import Any

import torch
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
    "sparse": {indices, values, tokens}, highest weight first (sparse_top_k, sparse_threshold);
    "multi_vector": a [num_tokens - 1, dim] matrix per input; "hybrid": {dense, sparse, multi_vector}
    from one forward (null where the model has no such head)."""
    model, results = await run_pooling(body, request, task=body.task)
    data = [{"object": "pooling", "index": i, "data": _data(r, body, request)} for i, r in enumerate(results)]
    return JSONBody({"object": "list", "data": data, "model": model, "usage": usage(results)})


def _data(result: EngineRequest, body: PoolingRequest, request: Request) -> Any:
    if body.task == "score":
        return float(result.output)
    if body.task == "sparse":
        return _sparse(result.output, body, request)
    if body.task == "hybrid":
        out = result.output
        return {"dense": encode_vector(out["dense"].numpy(), body.encoding_format),
                "sparse": None if out["sparse"] is None else _sparse(out["sparse"], body, request),
                "multi_vector": (None if out["multi_vector"] is None
                                 else encode_vector(out["multi_vector"].numpy(), body.encoding_format))}
    return encode_vector(result.output.numpy(), body.encoding_format)


def _sparse(weights: torch.Tensor, body: PoolingRequest, request: Request) -> dict[str, Any]:
    sparse = SparseEmbedding.from_weights(weights.numpy(), body.sparse_top_k, body.sparse_threshold)
    ids = sparse.indices.tolist()
    return {"indices": ids, "values": sparse.values.tolist(),
            "tokens": get_state(request).engine.tokenizer.token_strings(ids)}
