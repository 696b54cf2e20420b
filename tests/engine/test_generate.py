"""Offline generation on tiny decoders: parity with transformers, sampling, determinism, stops, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ember import LLM, InvalidRequestError, SamplingParams
from tests.conftest import check_close

PROMPTS = [[5, 17, 42, 99, 7, 230], [3, 9, 100], [8] * 20, [44, 55], list(range(4, 40))]
GREEDY = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)


def _eager(path: Path, **kwargs) -> LLM:
    base = dict(dtype="float32", enforce_eager=True, max_num_seqs=4, max_model_len=128, max_num_batched_tokens=256)
    return LLM(str(path), **{**base, **kwargs})


@pytest.fixture(scope="module")
def llama(tiny_llama: Path) -> LLM:
    return _eager(tiny_llama)


def _hf_greedy(path: Path, prompts: list[list[int]], n: int) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ref.generation_config.eos_token_id = None
    with torch.inference_mode():
        return [ref.generate(torch.tensor([p]), max_new_tokens=n, do_sample=False)[0, len(p):].tolist() for p in prompts]


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_qwen3"])
def test_greedy_32_tokens_match_transformers_in_one_batch(name: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(name)
    outs = _eager(path).generate(PROMPTS, GREEDY)
    expected = _hf_greedy(path, PROMPTS, 32)
    for out, ref in zip(outs, expected):
        assert out.outputs[0].token_ids == ref
        assert out.outputs[0].finish_reason == "length"


def test_preemption_under_a_small_cache_gives_the_same_tokens(tiny_llama: Path, llama: LLM) -> None:
    small = _eager(tiny_llama, block_size=4, kv_cache_memory=45 * 2 * 2 * 4 * 2 * 8 * 4)  # 45 blocks of 4 tokens
    assert small.engine.runner.num_kv_blocks == 45
    prompts = [list(range(4, 4 + 60)), list(range(10, 60)), [7] * 40, [9, 8, 7]]
    params = SamplingParams(temperature=0, max_tokens=60, ignore_eos=True)
    got = small.generate(prompts, params)
    stats = small.stats()
    assert stats["num_preemptions"] > 0 and stats["num_kv_blocks"] == 45
    assert stats["num_free_kv_blocks"] == 44  # everything released but the null block
    expected = llama.generate(prompts, params)
    assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in expected]


def test_two_fresh_engines_with_the_same_seed_sample_the_same(tiny_llama: Path) -> None:
    params = SamplingParams(temperature=1.0, max_tokens=24, ignore_eos=True)
    first = [o.outputs[0].token_ids for o in _eager(tiny_llama, seed=11).generate(PROMPTS, params)]
    second = [o.outputs[0].token_ids for o in _eager(tiny_llama, seed=11).generate(PROMPTS, params)]
    other = [o.outputs[0].token_ids for o in _eager(tiny_llama, seed=12).generate(PROMPTS, params)]
    assert first == second
    assert first != other


def test_per_request_seed_does_not_depend_on_the_batch(llama: LLM) -> None:
    seeded = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, max_tokens=24, seed=1234, ignore_eos=True)
    free = SamplingParams(temperature=1.0, max_tokens=24, ignore_eos=True)
    alone = llama.generate([PROMPTS[0]], seeded)[0].outputs[0].token_ids
    mixed = llama.generate([*PROMPTS[1:3], PROMPTS[0], *PROMPTS[3:]], [free, free, seeded, free, free])
    assert mixed[2].outputs[0].token_ids == alone
    assert llama.generate([PROMPTS[0]], seeded)[0].outputs[0].token_ids == alone


def test_top_k_1_and_tiny_top_p_and_temperature_are_greedy(llama: LLM) -> None:
    greedy = [o.outputs[0].token_ids for o in llama.generate(PROMPTS, GREEDY)]
    for params in (SamplingParams(temperature=0.8, top_k=1, max_tokens=32, ignore_eos=True),
                   SamplingParams(temperature=0.8, top_p=1e-6, max_tokens=32, ignore_eos=True),
                   # found by schemathesis: a subnormal temperature made the probabilities nan (a 500)
                   SamplingParams(temperature=1.401298464324817e-45, max_tokens=32, ignore_eos=True)):
        assert [o.outputs[0].token_ids for o in llama.generate(PROMPTS, params)] == greedy


def test_stops_and_max_tokens(llama: LLM) -> None:
    greedy = llama.generate([PROMPTS[0]], GREEDY)[0].outputs[0]
    stop_id = greedy.token_ids[5]
    first_hit = greedy.token_ids.index(stop_id)
    by_id = llama.generate([PROMPTS[0]], SamplingParams(temperature=0, max_tokens=32, stop_token_ids=[stop_id],
                                                        ignore_eos=True))[0].outputs[0]
    assert by_id.token_ids == greedy.token_ids[: first_hit + 1]
    assert (by_id.finish_reason, by_id.stop_reason) == ("stop", stop_id)
    stop_text = greedy.text[10:13]
    by_text = llama.generate([PROMPTS[0]], SamplingParams(temperature=0, max_tokens=32, stop=[stop_text],
                                                          ignore_eos=True))[0].outputs[0]
    assert by_text.text == greedy.text[: greedy.text.index(stop_text)]
    assert (by_text.finish_reason, by_text.stop_reason) == ("stop", stop_text)
    short = llama.generate([PROMPTS[0]], SamplingParams(temperature=0, max_tokens=3))[0].outputs[0]
    assert len(short.token_ids) <= 3


def test_eos_ends_generation(llama: LLM) -> None:
    eos = llama.engine.runner.eos_token_ids[0]
    greedy = llama.generate(PROMPTS, GREEDY)
    plain = llama.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=32))
    for full, out in zip(greedy, plain):
        ids = full.outputs[0].token_ids
        expected = ids[: ids.index(eos) + 1] if eos in ids else ids
        assert out.outputs[0].token_ids == expected


@pytest.mark.parametrize(("prompt", "params", "param"), [
    ("", SamplingParams(), "prompt"),
    ([], SamplingParams(), "input"),
    ("hello", SamplingParams(max_tokens=10_000), "max_tokens"),
    ("hello", SamplingParams(temperature=-1), "temperature"),
    ("hello", SamplingParams(top_p=0), "top_p"),
    ("hello", SamplingParams(top_k=-5), "top_k"),
    ([1, 10_000], SamplingParams(), "prompt"),
])
def test_bad_requests_raise_typed_errors(llama: LLM, prompt, params, param) -> None:
    with pytest.raises(InvalidRequestError) as info:
        llama.generate([prompt], params)
    assert info.value.param == param


def test_text_prompts_use_the_tokenizer(llama: LLM) -> None:
    out = llama.generate(["hello world the quick"], SamplingParams(temperature=0, max_tokens=4))[0]
    bos = llama.engine.runner.tokenizer.encode_batch(["x"], [None])[0].token_ids[0]
    assert out.prompt == "hello world the quick" and out.prompt_token_ids[0] == bos


def test_decoder_last_token_embeddings_match_transformers(tiny_qwen3: Path) -> None:
    from transformers import AutoModel

    llm = _eager(tiny_qwen3)
    prompts = [[5, 17, 42, 99, 7, 230], [3, 9, 100], list(range(4, 40))]
    ours = np.stack([o.outputs.data for o in llm.embed(prompts)])
    ref_model = AutoModel.from_pretrained(tiny_qwen3, dtype=torch.float32).eval()
    with torch.inference_mode():
        ref = np.stack([torch.nn.functional.normalize(ref_model(torch.tensor([p])).last_hidden_state[0, -1], dim=-1)
                        .numpy() for p in prompts])
    check_close(ours=ours, ref=ref, name_ours="ember", name_ref="transformers", tol=1e-6)


def test_qwen3_embedder_uses_last_token_pooling(tiny_qwen3_embedder: Path) -> None:
    from transformers import AutoModel

    llm = LLM(str(tiny_qwen3_embedder), dtype="float32", enforce_eager=True, max_num_seqs=4)
    assert llm.model_info.pooling_type == "LAST" and not llm.model_info.has_kv_cache
    prompts = [[5, 17, 42, 99, 7, 230], [3, 9, 100]]
    ours = np.stack([o.outputs.data for o in llm.embed(prompts)])
    ref_model = AutoModel.from_pretrained(tiny_qwen3_embedder, dtype=torch.float32).eval()
    with torch.inference_mode():
        ref = np.stack([torch.nn.functional.normalize(ref_model(torch.tensor([p])).last_hidden_state[0, -1], dim=-1)
                        .numpy() for p in prompts])
    check_close(ours=ours, ref=ref, name_ours="ember", name_ref="transformers", tol=1e-6)
