"""Schemathesis against the server's own OpenAPI schema, on every route, for the three kinds of
model a server runs (an embedder, a cross-encoder, a decoder): no 5xx, every error in the OpenAI
shape. EMBER_FUZZ_EXAMPLES sets the cases per operation and mode (the README's development section
runs it with more); -s prints the counts."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.entrypoints.fuzz import fuzz
from tests.entrypoints.server_harness import RunningServer
from tests.tiny_models import build_tiny_bert, build_tiny_classifier, build_tiny_llama

MAX_EXAMPLES = int(os.environ.get("EMBER_FUZZ_EXAMPLES", "25"))
MODELS: dict[str, Callable[[Path], Path]] = {
    "embedder": build_tiny_bert,
    "cross-encoder": lambda folder: build_tiny_classifier(folder, num_labels=1),
    "decoder": build_tiny_llama,
}


@pytest.mark.parametrize("kind", list(MODELS))
def test_no_generated_request_gets_a_server_error(kind: str, tmp_path: Path) -> None:
    with RunningServer(str(MODELS[kind](tmp_path / kind)), enforce_eager=True) as server:
        server.wait_ready()
        report = fuzz(server.url, MAX_EXAMPLES)
        print(f"\nschemathesis against a tiny {kind}, {MAX_EXAMPLES} cases per operation and mode:\n{report.table()}")
        assert report.findings == [], "\n".join(report.findings[:20])
        operations = {op for op, _, _ in report.counts}
        documented = {f"{method.upper()} {path}" for path, methods in server.app.openapi()["paths"].items()
                      for method in methods}
        assert operations == documented  # every route was fuzzed
        # A GET without parameters has one case; every operation with a body got them all, in both modes.
        assert all(report.cases(op) >= 2 * MAX_EXAMPLES for op in operations if op.startswith("POST"))
        assert httpx.get(f"{server.url}/health").status_code == 200
        assert server.engine.num_pending == 0
