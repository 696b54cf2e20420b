"""POST /score, /v1/score (vLLM), /rerank, /v1/rerank (Jina) and /v2/rerank (Cohere v2).

A cross-encoder reads each (query, document) pair; an embedding model scores by the cosine of
the two vectors (engine/scoring.py plans either). Both go through AsyncEngine.submit."""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from ember.engine.scoring import RankedDocument, check_top_n, pair_up, plan_scores, rank
from ember.entrypoints.server.protocol import JSONBody, RerankRequest, ScoreRequest
from ember.entrypoints.server.routes.embeddings import disconnect_waiter
from ember.entrypoints.server.state import ServerState, check_model, get_state, require_api_key
from ember.errors import InvalidRequestError
from ember.params import PoolingParams

router = APIRouter(dependencies=[Depends(require_api_key)])


async def _scores(state: ServerState, request: Request, pairs: list[tuple[str, str]], params: PoolingParams,
                  item: str) -> tuple[list[float], int]:
    """(score of each pair, tokens read). A too-long input is reported as the `item` field."""
    plan = plan_scores(state.engine.info, pairs, params)
    try:
        requests = await state.engine.submit(plan.task, plan.prompts, plan.params,
                                             is_disconnected=disconnect_waiter(request))
    except InvalidRequestError as exc:
        if exc.param != "input":
            raise
        raise InvalidRequestError(f"{item}: {exc}", param=item) from None
    return plan.scores([r.output for r in requests]), sum(r.num_tokens for r in requests)


def _usage(tokens: int) -> dict[str, int]:
    return {"prompt_tokens": tokens, "total_tokens": tokens}


@router.post("/score", response_class=JSONBody)
@router.post("/v1/score", response_class=JSONBody)
async def create_score(body: ScoreRequest, request: Request) -> Response:
    """One score per pair: text_1 against text_2 (1:1, 1:N or N:N)."""
    state = get_state(request)
    model = check_model(state, body.model)
    first, second = body.texts()
    if first is None or second is None:
        raise InvalidRequestError("give text_1 and text_2 (or queries and documents)",
                                  param="text_1" if first is None else "text_2")
    params = PoolingParams(truncate_prompt_tokens=body.truncate_prompt_tokens, use_activation=body.use_activation)
    scores, tokens = await _scores(state, request, pair_up(first, second), params, "text_2")
    data = [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores)]
    return JSONBody({"id": f"score-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()),
                     "model": model, "data": data, "usage": _usage(tokens)})


async def _rerank(body: RerankRequest, request: Request, *, truncate_by_default: bool
                  ) -> tuple[str, list[RankedDocument], int]:
    state = get_state(request)
    model = check_model(state, body.model)
    if not body.query:
        raise InvalidRequestError("query must not be empty", param="query")
    documents = body.document_texts()
    if not documents:
        raise InvalidRequestError("documents must not be empty", param="documents")
    check_top_n(body.top_n)  # before the model runs
    if body.max_tokens_per_doc is not None:
        if body.max_tokens_per_doc < 1:
            raise InvalidRequestError(f"max_tokens_per_doc must be a positive integer, got {body.max_tokens_per_doc}",
                                      param="max_tokens_per_doc")
        documents = await state.engine.run_in_pool(state.engine.tokenizer.cut_texts, documents,
                                                   body.max_tokens_per_doc)
    truncate = body.truncate_prompt_tokens
    if truncate is None and truncate_by_default:
        truncate = -1
    params = PoolingParams(truncate_prompt_tokens=truncate, use_activation=body.use_activation)
    pairs = pair_up(body.query, documents)
    scores, tokens = await _scores(state, request, pairs, params, "documents")
    return model, rank(body.document_texts(), scores, body.top_n), tokens


def _result(ranked: RankedDocument, with_document: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"index": ranked.index, "relevance_score": ranked.relevance_score}
    if with_document:
        out["document"] = {"text": ranked.document}
    return out


@router.post("/rerank", response_class=JSONBody)
@router.post("/v1/rerank", response_class=JSONBody)
async def create_rerank(body: RerankRequest, request: Request) -> Response:
    """Jina's rerank: results by decreasing relevance_score, with the documents unless
    return_documents is false. Over-long pairs are refused unless truncate_prompt_tokens is set."""
    model, ranked, tokens = await _rerank(body, request, truncate_by_default=False)
    with_documents = body.return_documents is not False
    return JSONBody({"id": f"rerank-{uuid.uuid4().hex}", "model": model, "usage": _usage(tokens),
                     "results": [_result(r, with_documents) for r in ranked]})


@router.post("/v2/rerank", response_class=JSONBody)
async def create_rerank_v2(body: RerankRequest, request: Request) -> Response:
    """Cohere's v2 rerank (what `cohere.ClientV2.rerank` calls): results by decreasing
    relevance_score; as Cohere does, long documents are truncated, never refused."""
    _, ranked, tokens = await _rerank(body, request, truncate_by_default=True)
    meta = {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}, "tokens": {"input_tokens": tokens}}
    return JSONBody({"id": str(uuid.uuid4()), "results": [_result(r, bool(body.return_documents)) for r in ranked],
                     "meta": meta})
