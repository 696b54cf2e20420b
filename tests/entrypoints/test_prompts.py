"""sentence-transformers prompts (config_sentence_transformers.json) on every surface: LLM.embed,
the drop-in, --default-prompt-name, and HTTP prompt_name / input_type."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from ember import LLM, PoolingParams, SentenceTransformer
from ember.errors import InvalidRequestError
from tests.entrypoints.server_harness import RunningServer, check_error


@pytest.fixture(scope="module")
def prompted(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("prompted") / "model"
    shutil.copytree(tiny_bert, folder)
    (folder / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": "query"}))
    return folder


def vector(llm: LLM, text: str, **kwargs: object) -> np.ndarray:
    return llm.embed(text, **kwargs)[0].outputs.data


def test_offline_prompts_and_the_default(prompted: Path) -> None:
    llm = LLM(str(prompted), dtype="float32", enforce_eager=True)
    bare = LLM(str(prompted), dtype="float32", enforce_eager=True, default_prompt_name="passage")
    np.testing.assert_allclose(vector(llm, "quick brown fox"), vector(bare, "quick brown fox", prompt_name="query"),
                               atol=1e-6)  # the model's default prompt is query
    np.testing.assert_allclose(vector(bare, "quick brown fox"), vector(llm, "quick brown fox", prompt_name="passage"),
                               atol=1e-6)  # default_prompt_name overrides the model's
    assert not np.allclose(vector(llm, "quick brown fox"), vector(llm, "quick brown fox", prompt_name="passage"))
    # the prompt is embedded and counted as text: "x" under the default is "query: x" with no prompt
    literal = llm.embed("query: quick brown fox", pooling_params=PoolingParams(prompt=""))[0]
    np.testing.assert_allclose(vector(llm, "quick brown fox"), literal.outputs.data, atol=1e-6)
    assert llm.embed("quick brown fox")[0].prompt_token_ids == literal.prompt_token_ids
    drop_in = SentenceTransformer(str(prompted), dtype="float32", enforce_eager=True)
    np.testing.assert_allclose(drop_in.encode("quick brown fox"), vector(llm, "quick brown fox"), atol=1e-6)
    with pytest.raises(InvalidRequestError, match="not one of this model's prompts") as err:
        llm.embed("x", prompt_name="nope")
    assert err.value.param == "prompt_name"
    with pytest.raises(InvalidRequestError) as err:
        LLM(str(prompted), enforce_eager=True, default_prompt_name="nope")
    assert err.value.param == "default_prompt_name"


def test_http_prompt_name_and_input_type(prompted: Path) -> None:
    llm = LLM(str(prompted), dtype="float32", enforce_eager=True)
    with RunningServer(str(prompted), dtype="float32", enforce_eager=True) as server:
        server.wait_ready()

        def embed(**body: object) -> np.ndarray:
            response = httpx.post(server.url + "/v1/embeddings", json={"input": "quick brown fox", **body})
            assert response.status_code == 200, response.text
            return np.array(response.json()["data"][0]["embedding"])

        np.testing.assert_allclose(embed(), vector(llm, "quick brown fox"), atol=1e-6)
        passage = vector(llm, "quick brown fox", prompt_name="passage")
        for body in ({"prompt_name": "passage"}, {"input_type": "search_document"}, {"input_type": "document"}):
            np.testing.assert_allclose(embed(**body), passage, atol=1e-6)
        np.testing.assert_allclose(embed(input_type="search_query"), vector(llm, "quick brown fox"), atol=1e-6)
        check_error(httpx.post(server.url + "/v1/embeddings", json={"input": "a", "prompt_name": "nope"}), 400,
                    "prompt_name")
        check_error(httpx.post(server.url + "/v1/embeddings", json={"input": "a", "input_type": "image"}), 400,
                    "input_type")
        card = httpx.get(server.url + "/v1/models").json()["data"][0]
        assert card["prompts"] == {"query": "query: ", "passage": "passage: "} and card["default_prompt_name"] == "query"
