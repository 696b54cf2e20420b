"""/v1/completions and /v1/chat/completions on a tiny Llama, with the real `openai` client."""

from __future__ import annotations

import httpx
import openai
import pytest

from ember import LLM, SamplingParams
from tests.entrypoints.server_harness import RunningServer, check_error

KWARGS = dict(dtype="float32", enforce_eager=True, max_num_seqs=4, max_model_len=128, max_num_batched_tokens=256)
PROMPT = "the quick brown fox jumps over"


@pytest.fixture(scope="module")
def server(tiny_llama):
    with RunningServer(str(tiny_llama), **KWARGS) as running:
        yield running.wait_ready()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused")


@pytest.fixture(scope="module")
def offline(tiny_llama):
    return LLM(str(tiny_llama), **KWARGS)


def test_completion_matches_offline_generate(client, offline, tiny_llama):
    out = client.completions.create(model=str(tiny_llama), prompt=PROMPT, max_tokens=12, temperature=0)
    expected = offline.generate([PROMPT], SamplingParams(temperature=0, max_tokens=12))[0]
    assert out.choices[0].text == expected.outputs[0].text
    assert out.choices[0].finish_reason == expected.outputs[0].finish_reason
    assert out.usage.prompt_tokens == len(expected.prompt_token_ids)
    assert out.usage.completion_tokens == len(expected.outputs[0].token_ids)


def test_completion_batch_of_prompts_and_token_ids(client, offline):
    out = client.completions.create(model=None, prompt=[[5, 17, 42], [3, 9, 100, 7]], max_tokens=5, temperature=0,
                                    extra_body={"ignore_eos": True})
    expected = offline.generate([[5, 17, 42], [3, 9, 100, 7]], SamplingParams(temperature=0, max_tokens=5,
                                                                              ignore_eos=True))
    assert [c.text for c in out.choices] == [e.outputs[0].text for e in expected]
    assert [c.index for c in out.choices] == [0, 1]


def test_streaming_completion_concatenates_to_the_full_text(client):
    full = client.completions.create(prompt=PROMPT, max_tokens=16, temperature=0, model=None,
                                     extra_body={"ignore_eos": True})
    chunks = list(client.completions.create(prompt=PROMPT, max_tokens=16, temperature=0, model=None, stream=True,
                                            extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in chunks) == full.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_chat_completion_uses_the_chat_template(client, offline):
    messages = [{"role": "user", "content": "hello world"}]
    out = client.chat.completions.create(model=None, messages=messages, max_tokens=8, temperature=0, seed=3)
    rendered = "<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n"
    expected = offline.generate([rendered], SamplingParams(temperature=0, max_tokens=8))[0]
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == expected.outputs[0].text
    assert out.usage.prompt_tokens == len(expected.prompt_token_ids)
    stream = client.chat.completions.create(model=None, messages=messages, max_tokens=8, temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream)
    assert text == expected.outputs[0].text


def test_seeded_sampling_is_reproducible_over_http(client):
    kwargs = dict(model=None, prompt=PROMPT, max_tokens=16, temperature=1.0, seed=42, extra_body={"ignore_eos": True})
    assert client.completions.create(**kwargs).choices[0].text == client.completions.create(**kwargs).choices[0].text


@pytest.mark.parametrize(("body", "param"), [
    ({"prompt": ""}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": PROMPT, "max_tokens": 10_000}, "max_tokens"),
    ({"prompt": PROMPT, "temperature": -1}, "temperature"),
    ({"prompt": PROMPT, "n": 2}, "n"),
])
def test_bad_completion_requests_are_400_in_openai_shape(server, body, param):
    check_error(httpx.post(server.url + "/v1/completions", json=body, timeout=60), 400, param)


def test_bad_requests_raise_in_the_openai_client(client):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=None, messages=[], max_tokens=4)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt=PROMPT, max_tokens=4)


def test_embeddings_from_the_same_decoder(client, offline):
    out = client.embeddings.create(model=None, input=[PROMPT])  # type: ignore[arg-type]
    expected = offline.embed([PROMPT])[0].outputs.embedding
    assert out.data[0].embedding == pytest.approx(expected, abs=1e-5)


def test_streaming_with_a_stop_string_never_sends_the_stop(client):
    full = client.completions.create(model=None, prompt=PROMPT, max_tokens=24, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    stop = full[8:11]
    kwargs = dict(model=None, prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop], extra_body={"ignore_eos": True})
    plain = client.completions.create(**kwargs).choices[0]
    streamed = list(client.completions.create(stream=True, **kwargs))
    assert plain.text == full[: full.index(stop)] and plain.finish_reason == "stop"
    assert "".join(c.choices[0].text for c in streamed) == plain.text
    assert streamed[-1].choices[0].finish_reason == "stop"
