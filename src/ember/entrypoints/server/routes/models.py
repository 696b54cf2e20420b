"""GET /v1/models (OpenAI) and GET /version."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from ember.entrypoints.server.protocol import JSONBody
from ember.entrypoints.server.state import get_state, require_api_key

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.get("/v1/models", response_class=JSONBody)
async def list_models(request: Request) -> Response:
    state = get_state(request)
    card = {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "ember",
            "root": state.engine.config.model_config.model}
    if state.engine.is_ready:
        info = state.engine.info
        card["max_model_len"] = info.max_model_len
        card["tasks"] = list(info.tasks)  # a route for another task answers 400 naming these
        if info.labels:
            card["labels"] = list(info.labels)
        if info.prompts:
            card["prompts"] = dict(info.prompts)
            card["default_prompt_name"] = info.default_prompt_name
    return JSONBody({"object": "list", "data": [card]})


@router.get("/version", response_class=JSONBody)
async def version() -> Response:
    from ember import __version__

    return JSONBody({"version": __version__})
