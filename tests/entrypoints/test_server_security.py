"""Security behaviour a user relies on: the `model` field of a request is a name, never a path
(no `..` or symlink reaches the filesystem), and the logs never hold input text, even when a
request fails."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.entrypoints.server_harness import RunningServer, check_error

SECRET = "zebra-passport-4921"


@pytest.fixture(scope="module")
def server(tiny_bert: Path) -> Iterator[RunningServer]:
    with RunningServer(str(tiny_bert), enforce_eager=True) as running:
        yield running.wait_ready()


@pytest.mark.parametrize("name", ["../../../etc/passwd", "/etc/passwd", "..", "sentence-transformers/../../etc",
                                  "symlink"])
def test_a_model_name_is_never_resolved_as_a_path(server: RunningServer, tiny_bert: Path, tmp_path: Path,
                                                  name: str) -> None:
    if name == "symlink":  # a link to the very folder being served is still not its name
        (tmp_path / "link").symlink_to(tiny_bert)
        name = str(tmp_path / "link")
    for route, body in [("/v1/embeddings", {"input": "a"}), ("/pooling", {"input": "a"}),
                        ("/tokenize", {"prompt": "a"}), ("/v1/rerank", {"query": "a", "documents": ["b"]})]:
        error = check_error(httpx.post(f"{server.url}{route}", json={**body, "model": name}), 404, "model")
        assert "does not exist" in error["message"]


def test_logs_never_hold_input_text(server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    calls = [
        ("/v1/embeddings", {"input": [SECRET, "fine"]}),  # served
        ("/v1/embeddings", {"input": " ".join([SECRET] * 200)}),  # too long: 400
        ("/v1/embeddings", {"input": SECRET, "dimensions": 999}),  # bad parameter: 400
        ("/v1/rerank", {"query": SECRET, "documents": [SECRET, "other"]}),
        ("/tokenize", {"prompt": SECRET}),
        ("/classify", {"input": SECRET}),  # a task the model does not serve: 400
        ("/v1/completions", {"prompt": SECRET}),
    ]
    with caplog.at_level(logging.DEBUG):
        for route, body in calls:
            assert httpx.post(f"{server.url}{route}", json=body).status_code < 500
        surrogate = b'{"input": "' + SECRET.encode() + b'\\ud800"}'  # valid JSON, not Unicode: 400
        headers = {"content-type": "application/json"}
        assert httpx.post(f"{server.url}/v1/embeddings", content=surrogate, headers=headers).status_code == 400
    assert caplog.records, "nothing was captured: the check would be empty"
    leaked = [r.getMessage() for r in caplog.records if SECRET in r.getMessage() or SECRET in str(r.exc_info)]
    assert leaked == []
