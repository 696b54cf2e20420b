"""Qwen3-Embedding's layout: a bare Qwen3Model with sentence-transformers LAST-token pooling and
Normalize, and its instruction prompt for queries (documents get none). Vectors equal
sentence-transformers' encode(prompt_name=...) in a mixed-length batch, offline and over HTTP
(`input_type` picks the prompt, as Cohere's and Voyage's clients send it), compiled."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from ember import LLM
from tests.entrypoints.server_harness import RunningServer, make_texts

PROMPTS = {"query": "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:",
           "document": ""}
TEXTS = [*make_texts(5, seed=13, max_words=10), "a"]  # byte-level BPE: many tokens per word


@pytest.fixture(scope="module")
def qwen3_embedding(tiny_qwen3_embedder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-qwen3-embedding") / "model"
    shutil.copytree(tiny_qwen3_embedder, folder)
    (folder / "config_sentence_transformers.json").write_text(json.dumps({"prompts": PROMPTS}), encoding="utf-8")
    return folder


def test_prompted_last_token_vectors_equal_sentence_transformers(qwen3_embedding: Path) -> None:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(qwen3_embedding), device="cpu")
    llm = LLM(str(qwen3_embedding), dtype="float32", quantization=None, max_num_seqs=8)
    assert (llm.model_info.pooling_type, llm.model_info.prompts) == ("LAST", PROMPTS)
    for name in ("query", "document"):
        ref = st.encode(TEXTS, prompt_name=name, convert_to_numpy=True)
        ours = np.stack([o.outputs.data for o in llm.embed(TEXTS, prompt_name=name)])
        np.testing.assert_allclose(ours, ref, atol=1e-4)
    query, document = (st.encode(TEXTS[:1], prompt_name=n, convert_to_numpy=True) for n in ("query", "document"))
    assert not np.allclose(query, document, atol=1e-3), "the instruction must change the query's vector"
    assert llm.stats()["compiles_after_ready"] == 0
    with RunningServer(str(qwen3_embedding), enforce_eager=True, dtype="float32", max_num_seqs=8) as server:
        server.wait_ready()
        body = {"input": TEXTS, "input_type": "query"}
        data = httpx.post(f"{server.url}/v1/embeddings", json=body).json()["data"]
        np.testing.assert_allclose([d["embedding"] for d in data], st.encode(TEXTS, prompt_name="query"), atol=1e-4)
