"""LangChain's OpenAIEmbeddings and LlamaIndex's OpenAIEmbedding, the real packages, against a
server started with the truncate default (`ember serve --long-inputs truncate`): documents far
over the model's length are embedded as they are, each to the vector of its first max_model_len
tokens, as sentence-transformers would embed it. LlamaIndex accepts only OpenAI's model names,
so the server answers to one of them (`--served-model-name text-embedding-3-small`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ember import LLM
from tests.conftest import check_close
from tests.entrypoints.server_harness import RunningServer, make_texts

SERVED = "text-embedding-3-small"
DOCUMENTS = [" ".join(make_texts(12, seed=s, max_words=30)) for s in range(3)] + ["a short one"]


@pytest.fixture(scope="module")
def server(tiny_bert: Path) -> Iterator[RunningServer]:
    with RunningServer(str(tiny_bert), served_model_name=SERVED, long_inputs="truncate", enforce_eager=True,
                       dtype="float32") as running:
        yield running.wait_ready()


@pytest.fixture(scope="module")
def expected(tiny_bert: Path) -> np.ndarray:
    llm = LLM(str(tiny_bert), enforce_eager=True, dtype="float32")
    outs = llm.embed(DOCUMENTS, truncate_prompt_tokens=-1)
    assert sum(o.truncated for o in outs) == 3, "the documents must be over the model's length"
    return np.stack([o.outputs.data for o in outs])


def test_langchain_openai_embeddings(server: RunningServer, expected: np.ndarray) -> None:
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(model=SERVED, base_url=f"{server.url}/v1", api_key="unused",
                                  check_embedding_ctx_length=False, max_retries=0)
    documents = np.array(embeddings.embed_documents(DOCUMENTS))
    check_close(ours=documents, ref=expected, name_ours="langchain", name_ref="LLM.embed", tol=1e-5)
    query = np.array(embeddings.embed_query(DOCUMENTS[0]))
    check_close(ours=query, ref=expected[0], name_ours="langchain query", name_ref="LLM.embed", tol=1e-5)


def test_llama_index_openai_embedding(server: RunningServer, expected: np.ndarray) -> None:
    from llama_index.embeddings.openai import OpenAIEmbedding

    embedding = OpenAIEmbedding(model=SERVED, api_base=f"{server.url}/v1", api_key="unused", max_retries=0)
    documents = np.array(embedding.get_text_embedding_batch(DOCUMENTS))
    check_close(ours=documents, ref=expected, name_ours="llama-index", name_ref="LLM.embed", tol=1e-5)
    query = np.array(embedding.get_query_embedding(DOCUMENTS[1]))
    check_close(ours=query, ref=expected[1], name_ours="llama-index query", name_ref="LLM.embed", tol=1e-5)
