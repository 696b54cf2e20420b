"""The real app on a localhost port, called with the real `openai` client and httpx: results equal
the offline API's, usage is exact, every bad request gets its status and the OpenAI error shape."""

from __future__ import annotations

import asyncio
import base64
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import orjson
import pytest

from ember import LLM, PoolingParams
from tests.conftest import check_close
from tests.entrypoints.server_harness import RunningServer, check_error, make_texts, wait_until

TOL = 1e-4
MAX_BODY = 256 * 1024


@pytest.fixture(scope="module")
def server(tiny_bert: Path) -> Iterator[RunningServer]:
    with RunningServer(str(tiny_bert), enforce_eager=True, served_model_name="tiny",
                       max_body_bytes=MAX_BODY) as running:
        yield running.wait_ready()


@pytest.fixture(scope="module")
def llm(tiny_bert: Path) -> LLM:
    return LLM(str(tiny_bert), enforce_eager=True)


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def offline(llm: LLM, prompts: Any, **params: Any) -> tuple[np.ndarray, int]:
    outs = llm.embed(prompts, pooling_params=PoolingParams(**params))
    return np.stack([o.outputs.data for o in outs]), sum(o.num_prompt_tokens for o in outs)


def vectors(response: Any) -> np.ndarray:
    """The client decodes base64 itself only when it chose it (its default); decode explicit base64 here."""
    return np.array([
        np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") if isinstance(d.embedding, str) else d.embedding
        for d in response.data
    ], dtype=np.float32)


@pytest.mark.parametrize("encoding_format", ["float", "base64", None])
def test_embeddings_equal_offline(client: openai.OpenAI, llm: LLM, encoding_format: str | None) -> None:
    texts = make_texts(7, seed=1)
    kwargs = {"encoding_format": encoding_format} if encoding_format else {}
    response = client.embeddings.create(model="tiny", input=texts, **kwargs)  # None: the client's default
    ref, num_tokens = offline(llm, texts)
    check_close(ours=vectors(response), ref=ref, name_ours="http", name_ref="offline", tol=TOL)
    assert [d.index for d in response.data] == list(range(7))
    assert response.usage.prompt_tokens == response.usage.total_tokens == num_tokens
    assert response.model == "tiny"


def test_base64_is_little_endian_float32(server: RunningServer, llm: LLM) -> None:
    body = httpx.post(f"{server.url}/v1/embeddings", json={"input": "hello world", "encoding_format": "base64"}).json()
    raw = base64.b64decode(body["data"][0]["embedding"])
    got = np.frombuffer(raw, dtype="<f4")
    ref, _ = offline(llm, "hello world")
    check_close(ours=got, ref=ref[0], name_ours="base64", name_ref="offline", tol=TOL)


@pytest.mark.parametrize("prompt", [[5, 9, 30, 31, 7], [[2, 50, 60, 3], [2, 70, 3], [2, 80, 81, 82, 83, 84, 3]]])
def test_token_array_inputs(client: openai.OpenAI, llm: LLM, prompt: list) -> None:
    response = client.embeddings.create(model="tiny", input=prompt, encoding_format="float")
    ref, num_tokens = offline(llm, prompt)
    check_close(ours=vectors(response), ref=ref, name_ours="http", name_ref="offline", tol=TOL)
    assert response.usage.prompt_tokens == num_tokens


def test_dimensions(client: openai.OpenAI, llm: LLM) -> None:
    texts = make_texts(3, seed=2)
    response = client.embeddings.create(model="tiny", input=texts, dimensions=8)
    ref, _ = offline(llm, texts, dimensions=8)
    assert vectors(response).shape == (3, 8)
    check_close(ours=vectors(response), ref=ref, name_ours="http", name_ref="offline", tol=TOL)


def test_truncation_usage(server: RunningServer, llm: LLM) -> None:
    long_text = " ".join(["fox"] * 200)
    body = httpx.post(f"{server.url}/v1/embeddings", json={"input": [long_text, "hello"], "truncate_prompt_tokens": -1})
    ref, num_tokens = offline(llm, [long_text, "hello"], truncate_prompt_tokens=-1)
    assert body.status_code == 200
    assert body.json()["usage"]["prompt_tokens"] == num_tokens == 64 + 3
    check_close(ours=np.array([d["embedding"] for d in body.json()["data"]]), ref=ref,
                name_ours="http", name_ref="offline", tol=TOL)


BAD_REQUESTS = [
    ("empty string", {"input": ""}, 400, "input"),
    ("empty string in list", {"input": ["a", ""]}, 400, "input"),
    ("empty list", {"input": []}, 400, "input"),
    ("empty token list", {"input": [[]]}, 400, "input"),
    ("too many items", {"input": ["a"] * 2049}, 400, "input"),
    ("non-integer tokens", {"input": [1, 2.5]}, 400, "input"),
    ("string tokens mixed", {"input": [[1, 2], ["a"]]}, 400, "input"),
    ("token outside vocab", {"input": [[1, 10**6]]}, 400, "input"),
    ("too long", {"input": " ".join(["fox"] * 200)}, 400, "input"),
    ("dimensions too large", {"input": "a", "dimensions": 33}, 400, "dimensions"),
    ("dimensions zero", {"input": "a", "dimensions": 0}, 400, "dimensions"),
    ("truncate above max len", {"input": "a", "truncate_prompt_tokens": 65}, 400, "truncate_prompt_tokens"),
    ("bad encoding_format", {"input": "a", "encoding_format": "hex"}, 400, "encoding_format"),
    ("missing input", {"model": "tiny"}, 400, "input"),
    ("unknown model", {"input": "a", "model": "gpt-4"}, 404, "model"),
]


@pytest.mark.parametrize(("name", "body", "status", "param"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_request(server: RunningServer, name: str, body: dict, status: int, param: str) -> None:
    error = check_error(httpx.post(f"{server.url}/v1/embeddings", json=body), status, param)
    assert error["type"] == "invalid_request_error"


def test_a_missing_field_is_named_as_missing(server: RunningServer) -> None:
    """TEI's clients send "inputs": the answer says that "input" is required, not what it may hold."""
    error = check_error(httpx.post(f"{server.url}/v1/embeddings", json={"inputs": "hello"}), 400, "input")
    assert error["message"] == "'input' is required"


def test_malformed_json_and_non_object(server: RunningServer) -> None:
    headers = {"content-type": "application/json"}
    check_error(httpx.post(f"{server.url}/v1/embeddings", content=b'{"input": [', headers=headers), 400, None)
    check_error(httpx.post(f"{server.url}/v1/embeddings", content=b'[1, 2]', headers=headers), 400, None)
    error = check_error(httpx.post(f"{server.url}/v1/embeddings", content=b'\xd2\xb5\x80.', headers=headers), 400,
                        None)  # found by schemathesis: FastAPI's own wording said nothing of the cause
    assert error["message"] == "malformed JSON body: it is not valid UTF-8 text"


@pytest.mark.parametrize("text", [b'"\\ud800"', b'"\\u0000\\ud800"', b'["ok", "\\udfff tail"]'])
def test_lone_surrogates_are_a_400_not_a_500(server: RunningServer, text: bytes) -> None:
    """Valid JSON that clients do send, but not valid Unicode: the tokenizer cannot take it."""
    headers = {"content-type": "application/json"}
    error = check_error(httpx.post(f"{server.url}/v1/embeddings", content=b'{"input": ' + text + b"}",
                                   headers=headers), 400, "input")
    assert "not valid Unicode" in error["message"]
    check_error(httpx.post(f"{server.url}/tokenize", content=b'{"prompt": "\\ud800"}', headers=headers), 400,
                "prompt")
    assert httpx.post(f"{server.url}/v1/embeddings", json={"input": "still serving"}).status_code == 200


def test_body_too_large(server: RunningServer) -> None:
    big = {"input": ["fox " * 1000] * 100}
    check_error(httpx.post(f"{server.url}/v1/embeddings", json=big), 413, None)

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while streaming
        yield b'{"input": ["'
        for _ in range(100):
            yield b"fox " * 1000
        yield b'"]}'

    check_error(httpx.post(f"{server.url}/v1/embeddings", content=chunks(),
                           headers={"content-type": "application/json"}), 413, None)


def test_openai_client_raises_typed_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model="tiny", input="")
    assert bad.value.body["param"] == "input"
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="a")


def test_bad_requests_do_not_disturb_good_ones(server: RunningServer, llm: LLM) -> None:
    texts = make_texts(20, seed=3)
    ref, _ = offline(llm, texts)

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            calls = []
            for text in texts:
                calls.append(http.post("/v1/embeddings", json={"input": text}))
                calls.append(http.post("/v1/embeddings", json={"input": [text, " ".join(["fox"] * 200)]}))
                calls.append(http.post("/v1/embeddings", json={"input": text, "dimensions": 99}))
            return await asyncio.gather(*calls)

    responses = asyncio.run(run())
    for i in range(len(texts)):
        good, too_long, bad_dims = responses[3 * i: 3 * i + 3]
        assert good.status_code == 200
        check_close(ours=np.array(good.json()["data"][0]["embedding"]), ref=ref[i], name_ours="http",
                    name_ref="offline", tol=TOL, label=f"text {i}")
        check_error(too_long, 400, "input")
        check_error(bad_dims, 400, "dimensions")


def test_clients_that_go_away_mid_batch_do_not_disturb_the_others(server: RunningServer, llm: LLM) -> None:
    """Raw clients send large requests and hang up at once, while others wait for theirs: every
    waiting client gets its own, correct vectors; the dropped work frees its queue slots."""
    texts = make_texts(30, seed=5)
    ref, _ = offline(llm, texts)
    body = orjson.dumps({"input": make_texts(300, seed=6)})
    head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()

    async def hang_up() -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(head + body)
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.close()

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            waiting = [http.post("/v1/embeddings", json={"input": [text]}) for text in texts]
            results = await asyncio.gather(*waiting, *(hang_up() for _ in range(10)))
            return list(results[: len(texts)])

    for i, response in enumerate(asyncio.run(run())):
        assert response.status_code == 200, response.text
        check_close(ours=np.array(response.json()["data"][0]["embedding"]), ref=ref[i], name_ours="http",
                    name_ref="offline", tol=TOL, label=f"text {i}")
    wait_until(lambda: server.engine.num_pending == 0, "the dropped requests to free the queue")
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_100_concurrent_mixed_requests(server: RunningServer, llm: LLM) -> None:
    rng = random.Random(4)
    cases = []
    for i in range(100):
        kind = i % 4
        if kind == 0:
            prompt: Any = make_texts(1, seed=100 + i)[0]
        elif kind == 1:
            prompt = make_texts(rng.randint(2, 40), seed=100 + i)
        elif kind == 2:
            prompt = [[2] + [rng.randrange(5, 240) for _ in range(rng.randint(1, 50))] + [3] for _ in range(3)]
        else:
            prompt = make_texts(5, seed=100 + i, max_words=10)
        dims = rng.choice([None, None, 4, 16])
        cases.append((prompt, dims, rng.choice(["float", "base64"])))

    async def run() -> list[Any]:
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)
        calls = [client.embeddings.create(model="tiny", input=p, encoding_format=f, **({"dimensions": d} if d else {}))
                 for p, d, f in cases]
        try:
            return await asyncio.gather(*calls)
        finally:
            await client.close()

    responses = asyncio.run(run())
    for i, ((prompt, dims, _), response) in enumerate(zip(cases, responses)):
        ref, num_tokens = offline(llm, prompt, dimensions=dims)
        check_close(ours=vectors(response), ref=ref, name_ours="http", name_ref="offline", tol=TOL, label=f"req {i}")
        assert response.usage.prompt_tokens == num_tokens


def test_pooling_route(server: RunningServer, llm: LLM) -> None:
    body = httpx.post(f"{server.url}/pooling", json={"input": ["hello world", "the fox"]}).json()
    ref, num_tokens = offline(llm, ["hello world", "the fox"])
    check_close(ours=np.array([d["data"] for d in body["data"]]), ref=ref, name_ours="pooling",
                name_ref="offline", tol=TOL)
    assert body["usage"]["prompt_tokens"] == num_tokens
    tokens = httpx.post(f"{server.url}/pooling", json={"input": "hello world", "task": "token_embed"}).json()
    ref_tokens = llm.encode("hello world", pooling_task="token_embed")[0].outputs.data
    check_close(ours=np.array(tokens["data"][0]["data"]), ref=ref_tokens, name_ours="pooling",
                name_ref="offline", tol=TOL)


def test_tokenize_detokenize(server: RunningServer, llm: LLM) -> None:
    out = httpx.post(f"{server.url}/tokenize", json={"prompt": "hello world", "return_token_strs": True}).json()
    expected = llm.embed("hello world")[0].prompt_token_ids
    assert out["tokens"] == expected and out["count"] == len(expected) and out["max_model_len"] == 64
    assert out["token_strs"][1:3] == ["hello", "world"]
    back = httpx.post(f"{server.url}/detokenize", json={"tokens": out["tokens"]}).json()
    assert back == {"prompt": "hello world"}
    check_error(httpx.post(f"{server.url}/detokenize", json={"tokens": [-1]}), 400, "tokens")
    check_error(httpx.post(f"{server.url}/tokenize", json={"prompt": "a", "model": "x"}), 404, "model")


def test_models_version_docs_health(server: RunningServer, client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert httpx.get(f"{server.url}/version").json()["version"]
    assert httpx.get(f"{server.url}/docs").status_code == 200
    assert "/v1/embeddings" in httpx.get(f"{server.url}/openapi.json").json()["paths"]
    assert httpx.get(f"{server.url}/health").status_code == 200
    check_error(httpx.get(f"{server.url}/no-such-route"), 404, None)
    check_error(httpx.get(f"{server.url}/v1/embeddings"), 405, None)


def test_auth_off_accepts_any_or_no_key(server: RunningServer) -> None:
    assert httpx.post(f"{server.url}/v1/embeddings", json={"input": "a"}).status_code == 200
    headers = {"Authorization": "Bearer whatever"}
    assert httpx.post(f"{server.url}/v1/embeddings", json={"input": "a"}, headers=headers).status_code == 200
