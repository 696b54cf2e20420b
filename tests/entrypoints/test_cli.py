"""The `ember` command line, run as a user would (a real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from ember import LLM


def ember(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ember.entrypoints.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=300)


def test_embed_stdin_to_jsonl_and_file_to_npy(tiny_bert, tmp_path):
    lines = ["quick brown fox", '{"text": "lazy dog"}', "", "hello world"]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines))
    result = ember("embed", str(tiny_bert), "--enforce-eager", "--dtype", "float32", "--include-text",
                   stdin="\n".join(lines))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["text"] for r in records] == ["quick brown fox", "lazy dog", "hello world"]
    assert [r["id"] for r in records] == [0, 1, 3]  # line numbers: the blank line 2 is skipped
    npy = tmp_path / "out.npy"
    result = ember("embed", str(tiny_bert), "--enforce-eager", "--dtype", "float32", "-i", str(source), "-o", str(npy))
    assert result.returncode == 0, result.stderr
    matrix = np.load(npy)
    expected = LLM(str(tiny_bert), dtype="float32", enforce_eager=True).embed(["quick brown fox", "lazy dog", "hello world"])
    np.testing.assert_allclose(matrix, np.stack([o.outputs.data for o in expected]), atol=1e-5)
    np.testing.assert_allclose(matrix[0], records[0]["embedding"], atol=1e-5)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["embed", "--max-num-seqs", "-3"], "--max-num-seqs"),
        (["embed", "--dtype", "float16"], "--dtype"),
        (["embed", "--pooler-config", "{bad"], "--pooler-config"),
        (["frobnicate"], "invalid choice"),
        (["embed", "--no-such-flag"], "unrecognized arguments"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, fragment):
    result = ember(*args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and fragment in result.stderr


def test_runtime_errors_exit_1_with_one_line(tmp_path):
    result = ember("embed", str(tmp_path / "missing-model"), stdin="hello\n")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("ember: error: model")
    result = ember("embed", "-i", str(tmp_path / "missing.txt"))
    assert result.returncode == 1 and "cannot read input" in result.stderr


def test_models_lists_the_default_model():
    result = ember("models")
    assert result.returncode == 0
    assert "sentence-transformers/all-MiniLM-L6-v2\t/" in result.stdout


def test_every_config_field_is_a_flag_that_reaches_the_config(monkeypatch):
    """The flags are generated from the config dataclasses: each field has one, and its value
    arrives in the EngineConfig / ServerConfig unchanged; flags not given keep the defaults."""
    import dataclasses

    from ember.config import ENGINE_PARTS, EngineConfig, ServerConfig
    from ember.entrypoints import args as cli_args
    from ember.entrypoints.cli import build_parser

    monkeypatch.setenv("EMBER_API_KEY", "from-env")
    parser = build_parser()
    flags = {f"--{f.name.replace('_', '-')}" for part in (*ENGINE_PARTS.values(), ServerConfig)
             for f in dataclasses.fields(part) if f.name != "model"}
    sub = next(a for a in parser._actions if a.dest == "command").choices["serve"]
    assert flags <= {s for a in sub._actions for s in a.option_strings}
    argv = ["serve", "some/model", "--max-num-seqs", "7", "--quantization", "none", "--enforce-eager",
            "--pooler-config", '{"pooling_type": "CLS"}', "--kv-cache-memory-fraction", "0.5", "--port", "9001"]
    ns = parser.parse_args(argv)
    config = cli_args.engine_config(ns, sub)
    assert config.model_config.model == "some/model" and config.scheduler_config.max_num_seqs == 7
    assert config.model_config.quantization is None and config.compile_config.enforce_eager
    assert config.model_config.pooler_config == {"pooling_type": "CLS"}
    assert config.cache_config.kv_cache_memory_fraction == 0.5
    assert config.device_config == EngineConfig().device_config  # not given: the dataclass defaults
    server = cli_args.server_config(ns, sub)
    assert server.port == 9001 and server.api_key == "from-env" and server.host == ServerConfig().host
