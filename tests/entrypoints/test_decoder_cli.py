"""The KV-cache flags on the command line: a too-small budget fails at startup, naming the flag."""

from __future__ import annotations

from tests.entrypoints.test_cli import ember


def test_too_small_kv_cache_budget_exits_1_naming_the_flag(tiny_llama):
    result = ember("embed", str(tiny_llama), "--enforce-eager", "--dtype", "float32", "--max-model-len", "64",
                   "--kv-cache-memory", "1000", stdin="hello\n")
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "needs at least" in last and "available" in last and "--kv-cache-memory" in last


def test_embed_with_a_decoder_on_the_command_line(tiny_llama):
    result = ember("embed", str(tiny_llama), "--enforce-eager", "--dtype", "float32", "--max-model-len", "64",
                   "--kv-cache-memory", "1000000", "--block-size", "8", stdin="hello world\nthe quick fox\n")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 2
