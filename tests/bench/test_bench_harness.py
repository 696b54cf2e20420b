"""The benchmark harness's pure parts: corpus determinism, metrics, CLI wiring (no timing asserts)."""

from __future__ import annotations

import numpy as np
import pytest

from ember.bench import corpus, roofline
from ember.bench.report import machine_line
from ember.bench.throughput import min_cosine
from ember.entrypoints.cli import build_parser


def test_corpus_is_deterministic_and_in_range() -> None:
    short, passages = corpus.load("short", 200), corpus.load("passages", 20)
    assert short == corpus.load("short", 200) and passages == corpus.load("passages", 20)
    assert len(set(short)) == 200
    assert all(5 <= len(t.split()) <= 30 for t in short)
    assert all(100 <= len(t.split()) <= 300 for t in passages)
    assert corpus.fingerprint(short) == corpus.fingerprint(list(short))


def test_corpus_rejects_unknown_name() -> None:
    with pytest.raises(ValueError, match="short"):
        corpus.load("long", 3)


def test_flops_per_token_of_minilm_is_about_22_mflop(tmp_path) -> None:
    (tmp_path / "config.json").write_text('{"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 6}')
    assert 21e6 < roofline.flops_per_token(str(tmp_path), 128) < 23e6


def test_min_cosine_is_scale_invariant() -> None:
    ref = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    assert min_cosine(3 * ref, ref) == pytest.approx(1.0, abs=1e-6)
    assert min_cosine(-ref, ref) == pytest.approx(-1.0, abs=1e-6)


def test_bench_subcommand_parses() -> None:
    args = build_parser().parse_args(["bench", "--engines", "ember,st-fp32", "--runs", "1"])
    assert args.command == "bench" and args.engines == "ember,st-fp32" and args.task == "throughput"


def test_a_run_held_to_a_narrower_isa_says_so_in_its_machine_line(monkeypatch) -> None:
    """The flags come from /proc/cpuinfo; a run held to AVX2 (a proxy for an older CPU) must not
    read as a run of the CPU's own ISA."""
    for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    assert "held to" not in machine_line({"cpu": roofline.cpu_description()})
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    cpu = roofline.cpu_description()
    assert cpu["held_to"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert "held to" in machine_line({"cpu": cpu}) and "ONEDNN_MAX_CPU_ISA=AVX2" in machine_line({"cpu": cpu})


def test_a_run_held_to_avx2_measures_no_bf16_roofline(monkeypatch) -> None:
    """Held to AVX2, bf16 matmuls are emulated even on a CPU with AVX512_BF16: measuring their
    "peak" took 2.5 minutes per round and meant nothing."""
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not roofline.has_native_bf16()
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setattr(roofline.torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert not roofline.has_native_bf16()
    monkeypatch.setattr(roofline.torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert roofline.has_native_bf16() == bool({"avx512_bf16", "amx_bf16"} & set(roofline.cpu_description()["flags"]))
