"""POST /v1/embeddings (OpenAI) and the request flow the pooling route shares."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from ember.engine.request import Request as EngineRequest
from ember.engine.request import chunks_of
from ember.entrypoints.server.protocol import (
    EmbeddingRequest,
    EmbeddingResponse,
    JSONBody,
    PoolingRequest,
    encode_vector,
)
from ember.entrypoints.server.state import check_model, get_state, require_api_key
from ember.errors import InvalidRequestError
from ember.outputs import SparseEmbedding
from ember.params import PoolingParams

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.post("/v1/embeddings", response_model=EmbeddingResponse, response_class=JSONBody)
async def create_embeddings(body: EmbeddingRequest, request: Request) -> Response:
    """One vector per input, in input order; `usage.prompt_tokens` counts the tokens embedded.
    return_sparse / return_multi_vector add the other outputs of the same forward (the hybrid task)."""
    task = hybrid_task(body, get_state(request).engine.info.tasks)
    model, results = await run_pooling(body, request, task=task)
    data = [embedding_item(i, r, body) for i, r in enumerate(results)]
    return JSONBody({"object": "list", "data": data, "model": model, "usage": usage(results)})


def hybrid_task(body: EmbeddingRequest, tasks: tuple[str, ...]) -> str:
    """"hybrid" when the request asks for sparse or multi-vector outputs besides the vector, else
    "embed"; InvalidRequestError naming the field when the model has no head for what it asks."""
    for field, kind, heads in (("return_sparse", "sparse", "SPLADE or bge-m3's sparse_linear"),
                               ("return_multi_vector", "multi_vector", "bge-m3's colbert_linear")):
        if getattr(body, field) and kind not in tasks:
            raise InvalidRequestError(f"{field}: this model has no {kind} head ({heads}); it serves: "
                                      f"{', '.join(tasks)}", param=field)
    return "hybrid" if body.return_sparse or body.return_multi_vector else "embed"


async def run_pooling(body: EmbeddingRequest | PoolingRequest, request: Request, *, task: str
                      ) -> tuple[str, list[EngineRequest]]:
    """Check the model and the input, run it through the engine; (served name, finished requests)."""
    state = get_state(request)
    model = check_model(state, body.model)
    check_input(body.input)
    params = PoolingParams(normalize=body.normalize, dimensions=body.dimensions,
                           truncate_prompt_tokens=body.truncate_prompt_tokens,
                           use_activation=getattr(body, "use_activation", None),
                           prompt_name=prompt_name(state.engine.info.prompts, body.prompt_name, body.input_type),
                           long_inputs=body.long_inputs, chunk_overlap=body.chunk_overlap,
                           return_chunks=body.return_chunks, sparse_top_k=body.sparse_top_k,
                           sparse_threshold=body.sparse_threshold)
    results = await state.engine.submit(task, body.input, params, is_disconnected=disconnect_waiter(request))
    return model, results


def embedding_item(index: int, request: EngineRequest, body: EmbeddingRequest) -> dict[str, Any]:
    """One data item: the vector, whether the input was truncated, its chunks if it was chunked,
    and the sparse weights and multi-vector when the request asked for them."""
    encoding_format = body.encoding_format
    output = request.output
    dense = output["dense"] if isinstance(output, dict) else output
    item = {"object": "embedding", "index": index, "embedding": encode_vector(dense.numpy(), encoding_format),
            "truncated": bool(getattr(request, "truncated", False))}
    if isinstance(output, dict):
        if body.return_sparse:
            sparse = SparseEmbedding.from_weights(output["sparse"].numpy(), body.sparse_top_k, body.sparse_threshold)
            item["sparse_embedding"] = {"indices": sparse.indices.tolist(), "values": sparse.values.tolist()}
        if body.return_multi_vector:  # always floats: the openai client asks for base64 unbidden, and
            item["multi_vector"] = output["multi_vector"].numpy()  # decodes `embedding` only
    chunks = chunks_of(request)
    if chunks is not None:
        item["chunks"] = [{"start": c.start, "end": c.end, "tokens": c.num_tokens,
                           **({} if c.embedding is None else {"embedding": encode_vector(c.embedding, encoding_format)})}
                          for c in chunks]
    return item


def check_input(value: Any) -> None:
    """What pydantic's types do not say: no empty strings or lists (the AsyncEngine counts items and tokens)."""
    if value == "" or value == []:
        raise InvalidRequestError("'input' must not be empty", param="input")
    if isinstance(value, list) and isinstance(value[0], (str, list, tuple)):
        empty = next((i for i, item in enumerate(value) if len(item) == 0 or (isinstance(item, tuple) and "" in item)), None)
        if empty is not None:
            raise InvalidRequestError(f"'input[{empty}]' must not be empty", param="input")


_INPUT_TYPES = {"query": ("query", "search_query"), "search_query": ("query", "search_query"),
                "document": ("document", "passage", "search_document"),
                "search_document": ("document", "passage", "search_document"),
                "passage": ("passage", "document", "search_document")}


def prompt_name(prompts: dict[str, str], name: str | None, input_type: str | None) -> str | None:
    """prompt_name as given, else the model's prompt for `input_type` (None when it has none:
    a symmetric model embeds queries and documents alike)."""
    if name is not None or input_type is None:
        return name
    if input_type not in _INPUT_TYPES and input_type not in prompts:
        raise InvalidRequestError(f"input_type must be one of {', '.join(_INPUT_TYPES)} or a prompt name of this "
                                  f"model ({', '.join(sorted(prompts)) or 'none'}), got {input_type!r}",
                                  param="input_type")
    return next((p for p in (input_type, *_INPUT_TYPES.get(input_type, ())) if p in prompts), None)


def usage(results: list[EngineRequest]) -> dict[str, int]:
    tokens = sum(r.num_tokens for r in results)
    return {"prompt_tokens": tokens, "total_tokens": tokens}


def disconnect_waiter(request: Request) -> Any:
    """An awaitable factory that returns when the client goes away (the body is already read)."""

    async def wait_for_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return wait_for_disconnect
