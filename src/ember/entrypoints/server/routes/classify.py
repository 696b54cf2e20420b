"""POST /classify (vLLM): class probabilities of each input, with its most likely label."""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from ember.entrypoints.server.protocol import ClassifyRequest, JSONBody
from ember.entrypoints.server.routes.embeddings import check_input, disconnect_waiter, usage
from ember.entrypoints.server.state import check_model, get_state, require_api_key
from ember.params import PoolingParams

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.post("/classify", response_class=JSONBody)
async def create_classification(body: ClassifyRequest, request: Request) -> Response:
    state = get_state(request)
    model = check_model(state, body.model)
    check_input(body.input)
    params = PoolingParams(truncate_prompt_tokens=body.truncate_prompt_tokens, use_activation=body.use_activation)
    results = await state.engine.submit("classify", body.input, params, is_disconnected=disconnect_waiter(request))
    labels = state.engine.info.labels
    data = []
    for i, r in enumerate(results):
        probs = r.output.tolist()
        best = max(range(len(probs)), key=probs.__getitem__)
        data.append({"index": i, "label": labels[best], "probs": probs, "num_classes": len(probs)})
    return JSONBody({"id": f"classify-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()),
                     "model": model, "data": data, "usage": usage(results)})
