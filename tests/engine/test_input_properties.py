"""Property tests of the input path (Engine.make_requests: normalize_prompts, InputProcessor,
PoolingParams.verify) with Hypothesis: any Unicode, any token-id list, any parameter mix, any
Python value as a prompt. Each gives a clear InvalidRequestError naming a field, or requests that
are correct (in the vocabulary, within max_model_len, truncated as asked) and that run; never any
other exception."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ember import LLM
from ember.errors import InvalidRequestError
from ember.params import PoolingParams
from tests.tiny_models import WORDS, build_tiny_classifier

EXAMPLES = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
                    derandomize=os.environ.get("CI") == "true")
"""CI runs the same examples every time (a gate must not flake); elsewhere every run explores anew."""
FIELDS = {"input", "task", "pooling_task", "normalize", "dimensions", "truncate_prompt_tokens", "truncation_side",
          "use_activation", "prompt", "prompt_name"}

# Any code point, lone surrogates included (valid in JSON, invalid in UTF-8); words of the model's
# vocabulary make long, mostly in-vocabulary texts likely.
any_char = st.characters(codec=None, categories=None)
texts = st.one_of(st.text(any_char, max_size=80),
                  st.lists(st.sampled_from(WORDS), max_size=150).map(" ".join),
                  st.text(st.sampled_from("\x00\ufeff\u200b \t\n\r\ud800\udfff\U0010ffff"), max_size=20))
token_ids = st.lists(st.one_of(st.integers(-5, 130), st.integers(-2**70, 2**70)), max_size=200)
garbage = st.recursive(st.one_of(st.none(), st.booleans(), st.floats(), st.binary(max_size=8), st.integers(),
                                 st.text(max_size=5)),
                       lambda inner: st.one_of(st.lists(inner, max_size=3), st.tuples(inner, inner),
                                               st.dictionaries(st.text(max_size=12), inner, max_size=2)),
                       max_leaves=6)
prompts = st.one_of(texts, token_ids, st.lists(st.one_of(texts, token_ids), max_size=6),
                    st.tuples(texts, texts), st.lists(st.tuples(texts, texts), max_size=4), garbage)

def mostly(valid: st.SearchStrategy, invalid: st.SearchStrategy) -> st.SearchStrategy:
    """`valid` seven times in eight, so that a mix of seven fields still reaches the model often."""
    return st.one_of(*[valid] * 7, invalid)


params = st.builds(
    PoolingParams,
    normalize=mostly(st.sampled_from([None, True, False]), st.sampled_from([1, "yes"])),
    dimensions=mostly(st.sampled_from([None, None, 8, 16, 32]), st.one_of(st.integers(-3, 40), st.just(2**40),
                                                                          st.just(True))),
    truncate_prompt_tokens=mostly(st.sampled_from([None, -1, 5, 64]),
                                  st.one_of(st.integers(-3, 70), st.just(10**9), st.just(False))),
    truncation_side=mostly(st.sampled_from(["right", "left"]), st.just("middle")),
    use_activation=mostly(st.sampled_from([None, True, False]), st.just(0)),
    prompt_name=mostly(st.none(), st.sampled_from(["query", "nope"])),
    prompt=mostly(st.sampled_from([None, None, "", "query: "]), st.just(7)),
)
valid_params = st.builds(PoolingParams, truncate_prompt_tokens=st.sampled_from([None, -1, 1, 7, 64]),
                         truncation_side=st.sampled_from(["right", "left"]))
tasks = mostly(st.sampled_from(["embed", "token_embed", "classify", "score"]),
               st.sampled_from(["generate", "rerank", ""]))
few_texts = st.lists(st.sampled_from(["hello world", "a", " ".join(WORDS[:30])]), min_size=1, max_size=3)


@pytest.fixture(scope="module")
def embedder(tiny_bert: Path) -> Iterator[LLM]:
    yield LLM(str(tiny_bert), enforce_eager=True)


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LLM]:
    yield LLM(str(build_tiny_classifier(tmp_path_factory.mktemp("prop-ce"), num_labels=1)), enforce_eager=True)


def make_or_refuse(llm: LLM, task: str, prompt: Any, p: PoolingParams) -> list | None:
    """The requests, or None when refused with a well-formed InvalidRequestError."""
    try:
        requests = llm.engine.make_requests(task, prompt, p)
    except InvalidRequestError as exc:
        assert str(exc) and exc.param in FIELDS, (exc, exc.param)
        event(f"refused ({exc.param})")
        return None
    event("accepted")
    return requests


def check_requests(llm: LLM, requests: list, p: PoolingParams) -> None:
    """Every accepted request is in the vocabulary and within the length it was allowed."""
    info = llm.engine.info
    limit = p.token_limit(info) or info.max_model_len
    for r in requests:
        assert 0 < r.num_tokens <= limit, (r.num_tokens, limit)
        assert all(0 <= t < info.vocab_size for t in r.prompt_token_ids)


def check_outputs(llm: LLM, requests: list) -> None:
    """They run, and give finite numbers of the expected shape."""
    for r in llm.engine.run(requests):
        out = r.output.numpy()
        assert np.isfinite(out).all()
        if r.task == "token_embed":
            assert out.shape[0] == r.num_tokens


def served_or_refused(llm: LLM, task: str, prompt: Any, p: PoolingParams) -> None:
    requests = make_or_refuse(llm, task, prompt, p)
    if requests is not None:
        check_requests(llm, requests, p)
        check_outputs(llm, requests)


@EXAMPLES
@given(task=st.sampled_from(["embed", "token_embed"]), prompt=prompts, p=valid_params)
def test_any_prompt_is_refused_clearly_or_embedded(embedder: LLM, task: str, prompt: Any, p: PoolingParams) -> None:
    served_or_refused(embedder, task, prompt, p)


@EXAMPLES
@given(task=mostly(st.sampled_from(["embed", "token_embed"]), tasks), prompt=few_texts, p=params)
def test_any_parameter_mix_is_refused_clearly_or_served(embedder: LLM, task: str, prompt: Any,
                                                        p: PoolingParams) -> None:
    served_or_refused(embedder, task, prompt, p)


@EXAMPLES
@given(task=tasks, prompt=prompts, p=st.one_of(valid_params, params))
def test_any_input_to_a_cross_encoder(cross_encoder: LLM, task: str, prompt: Any, p: PoolingParams) -> None:
    served_or_refused(cross_encoder, task, prompt, p)


@EXAMPLES
@given(ids=token_ids, truncate=st.one_of(st.none(), st.just(-1), st.integers(1, 64)))
def test_token_ids_are_taken_exactly_or_refused_by_the_vocabulary(embedder: LLM, ids: list[int],
                                                                  truncate: int | None) -> None:
    info = embedder.engine.info
    p = PoolingParams(truncate_prompt_tokens=truncate)
    requests = make_or_refuse(embedder, "embed", [ids], p)
    in_vocab = all(0 <= t < info.vocab_size for t in ids)
    limit = p.token_limit(info)
    fits = limit is not None or len(ids) <= info.max_model_len
    assert (requests is not None) == (bool(ids) and in_vocab and fits), (ids, truncate)
    if requests is not None:
        kept = ids if limit is None else ids[:limit]
        assert list(requests[0].prompt_token_ids) == kept


@EXAMPLES
@given(text=st.text(any_char, min_size=1, max_size=60))
def test_any_valid_unicode_text_embeds(embedder: LLM, text: str) -> None:
    """Text that has a UTF-8 form always embeds (truncated to fit); text that has none is refused."""
    p = PoolingParams(truncate_prompt_tokens=-1)
    requests = make_or_refuse(embedder, "embed", text, p)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        assert requests is None
        return
    assert requests is not None
    check_outputs(embedder, requests)


def test_a_pair_limit_below_its_special_tokens_is_refused(cross_encoder: LLM) -> None:
    """Found by test_any_input_to_a_cross_encoder: truncate_prompt_tokens=1 gave a pair 3 tokens."""
    with pytest.raises(InvalidRequestError) as raised:
        cross_encoder.engine.make_requests("classify", [("", "")], PoolingParams(truncate_prompt_tokens=1))
    assert raised.value.param == "truncate_prompt_tokens" and "special tokens" in str(raised.value)
    [ok] = cross_encoder.engine.make_requests("classify", [("", "")], PoolingParams(truncate_prompt_tokens=3))
    assert ok.num_tokens == 3
