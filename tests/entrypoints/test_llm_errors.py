"""Bad input to the offline API: each a clear typed error, and the engine keeps working."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ember import (
    LLM,
    InvalidRequestError,
    ModelNotFoundError,
    PoolingParams,
    UnsupportedModelError,
)


@pytest.fixture(scope="module")
def llm(tiny_bert):
    return LLM(str(tiny_bert), dtype="float32", enforce_eager=True)


@pytest.mark.parametrize(
    ("prompts", "fragment"),
    [
        (None, "got None"),
        ([], "must not be empty"),
        (42, "got int"),
        ([["a", "b"]], "prompt 0 must be a string"),
        (["ok", 3.5], "prompt 1 must be a string"),
        ([[]], "empty token list"),
        ([[1, 2, 10**9]], "outside the vocabulary"),
        ([[1, -5]], "outside the vocabulary"),
        (b"bytes", "got bytes"),
    ],
)
def test_bad_prompts_raise_typed_errors(llm, prompts, fragment):
    with pytest.raises(InvalidRequestError, match=fragment):
        llm.embed(prompts)
    assert len(llm.embed("still works")) == 1


def test_too_long_without_truncation_names_the_fix(llm):
    long_text = "quick " * 200
    with pytest.raises(InvalidRequestError, match="truncate_prompt_tokens"):
        llm.embed(long_text)
    out = llm.embed(long_text, truncate_prompt_tokens=-1)[0]
    assert out.truncated and len(out.prompt_token_ids) == llm.model_info.max_model_len
    left = llm.embed(long_text, pooling_params=PoolingParams(truncate_prompt_tokens=10, truncation_side="left"))[0]
    assert left.truncated and len(left.prompt_token_ids) == 10


@pytest.mark.parametrize(
    ("params", "param"),
    [
        (PoolingParams(dimensions=0), "dimensions"),
        (PoolingParams(dimensions=10_000), "dimensions"),
        (PoolingParams(truncate_prompt_tokens=0), "truncate_prompt_tokens"),
        (PoolingParams(truncate_prompt_tokens=100_000), "truncate_prompt_tokens"),
        (PoolingParams(truncation_side="middle"), "truncation_side"),  # type: ignore[arg-type]
    ],
)
def test_bad_pooling_params_name_the_field(llm, params, param):
    with pytest.raises(InvalidRequestError) as info:
        llm.embed("hello", pooling_params=params)
    assert info.value.param == param


def test_unknown_engine_argument():
    with pytest.raises(InvalidRequestError, match="unknown engine argument"):
        LLM("whatever", max_num_seqz=3)


def test_missing_folder_lists_installed_models(tmp_path):
    with pytest.raises(ModelNotFoundError, match="all-MiniLM-L6-v2"):
        LLM(str(tmp_path / "nope"))
    with pytest.raises(ModelNotFoundError, match="neither a folder nor a known"):
        LLM("org/unknown-model")


def test_folder_without_weights(tiny_bert, tmp_path):
    folder = tmp_path / "no-weights"
    shutil.copytree(tiny_bert, folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="no weights"):
        LLM(str(folder), enforce_eager=True)


def test_folder_without_config(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(ModelNotFoundError, match=r"no config\.json"):
        LLM(str(tmp_path))


def test_unsupported_architecture(tiny_bert, tmp_path):
    folder = tmp_path / "gpt"
    shutil.copytree(tiny_bert, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(architectures=["FancyNewModel"], model_type="fancy")
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match=r"FancyNewModel.*supported: "):
        LLM(str(folder))


def test_unsupported_st_module(tiny_bert, tmp_path):
    folder = tmp_path / "dense"
    shutil.copytree(tiny_bert, folder)
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Thing", "type": "sentence_transformers.models.Thing"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(UnsupportedModelError, match="Thing"):
        LLM(str(folder))


@pytest.mark.parametrize(("kwargs", "param"), [({"dtype": "float16"}, "dtype"), ({"max_num_seqs": 0}, "max_num_seqs"),
                                               ({"seed": "x"}, "seed"), ({"compile_scope": "graph"}, "compile_scope")])
def test_bad_engine_config(kwargs, param):
    with pytest.raises(InvalidRequestError) as info:
        LLM("sentence-transformers/all-MiniLM-L6-v2", **kwargs)
    assert info.value.param == param


def test_long_inputs_default_per_engine(tiny_bert):
    """long_inputs: an over-long input without truncate_prompt_tokens is an error that says how to
    change that, or (long_inputs="truncate") cut at max_model_len; an explicit limit still wins."""
    long_text = "quick brown fox " * 40
    strict = LLM(str(tiny_bert), enforce_eager=True, dtype="float32")
    with pytest.raises(InvalidRequestError, match="long_inputs='truncate'") as err:
        strict.embed(long_text)
    assert err.value.param == "input"
    lenient = LLM(str(tiny_bert), enforce_eager=True, dtype="float32", long_inputs="truncate")
    out = lenient.embed(long_text)[0]
    assert out.truncated and out.num_prompt_tokens == lenient.model_info.max_model_len
    assert lenient.embed(long_text, truncate_prompt_tokens=10)[0].num_prompt_tokens == 10
    np.testing.assert_allclose(out.outputs.data, strict.embed(long_text, truncate_prompt_tokens=-1)[0].outputs.data,
                               atol=1e-6)
    with pytest.raises(InvalidRequestError) as err:
        LLM(str(tiny_bert), enforce_eager=True, long_inputs="split")
    assert err.value.param == "long_inputs"
