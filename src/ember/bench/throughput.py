"""Throughput of Ember and its peers on the same texts in one run (issue 6).

Every engine runs in its own process (its own venv for peers); each reports its median time over
`runs` passes per corpus after one untimed pass, its first-call time, peak RSS and embeddings.
This module computes texts/s, tokens/s, ratios to the best peer and to the GEMM roofline, and
min cosine against the fp32 sentence-transformers reference.
"""

from __future__ import annotations

import datetime
import logging
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ember.bench import corpus, roofline
from ember.bench.engines import (
    ENGINES,
    EngineSpec,
    find_runners_dir,
    run_engine,
    skip_reason,
)

logger = logging.getLogger(__name__)
REFERENCE = EngineSpec("reference", "reference: sentence-transformers fp32", "st", None, "fp32", {"dtype": "float32"})


@dataclass(slots=True)
class BenchConfig:
    model: str
    """Model folder (all engines load it by path)."""
    engines: list[str] = field(default_factory=lambda: [e.name for e in ENGINES])
    n_short: int = 1024
    n_passages: int = 256
    runs: int = 3
    rounds: int = 1
    """Processes per engine, round-robin over the engines; each does `runs` timed passes."""
    max_len: int = 256
    out_dir: str = "bench/results"
    task: str = "throughput"
    latency_calls: int = 200


def make_job(cfg: BenchConfig) -> dict[str, Any]:
    texts = {"short": corpus.load("short", cfg.n_short)}
    if cfg.task == "throughput":
        texts["passages"] = corpus.load("passages", cfg.n_passages)
    return {"task": cfg.task, "model": cfg.model, "texts": texts, "runs": cfg.runs, "max_len": cfg.max_len,
            "out_dir": cfg.out_dir, "latency_calls": cfg.latency_calls}


def token_counts(model: str, texts: list[str], max_len: int) -> list[int]:
    """Tokens per text as the model sees them (special tokens included, truncated)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(model) / "tokenizer.json"))
    tok.enable_truncation(max_len)
    tok.no_padding()
    return [len(e.ids) for e in tok.encode_batch(texts)]


def run(cfg: BenchConfig) -> dict[str, Any]:
    """Run every requested engine, `rounds` times round-robin, and return the raw report.

    Rounds spread each engine's runs over the whole benchmark, so that load from other
    processes on a shared machine hits every engine alike instead of whichever ran at the time.
    """
    runners = find_runners_dir()
    if runners is None:
        raise FileNotFoundError("bench/peers/ not found: run `ember bench` from Ember's source checkout")
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    job = make_job(cfg)
    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "task": cfg.task, "model": cfg.model, "runs": cfg.runs * cfg.rounds, "rounds": cfg.rounds,
        "cpu": roofline.cpu_description(), "load_average_start": os.getloadavg(), "ember_source": ember_source(),
        "corpora": {name: _corpus_info(cfg, texts) for name, texts in job["texts"].items()},
        "engines": [_entry(spec) for spec in ENGINES if spec.name in cfg.engines],
    }
    peaks: list[dict[str, float]] = []
    for round_index in range(cfg.rounds):
        if cfg.task == "throughput":
            logger.info("measuring the GEMM roofline (round %d)", round_index + 1)
            peaks.append({"fp32": roofline.gemm_peak_gflops(torch.float32),
                          "bf16": roofline.gemm_peak_gflops(torch.bfloat16) if roofline.has_native_bf16() else None})
        for entry in report["engines"]:
            if "skipped" not in entry:
                _run_round(entry, job, runners, round_index)
    report["load_average_end"] = os.getloadavg()
    if cfg.task == "throughput":
        # The best measurement is the machine's capability; lower ones were disturbed by load.
        report["gemm_peak_gflops"] = {k: max((p[k] for p in peaks if p[k]), default=None) for k in ("fp32", "bf16")}
        _add_reference(report, job, runners)
        _add_metrics(report)
    return report


def _entry(spec: EngineSpec) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": spec.name, "label": spec.label, "precision": spec.precision,
                             "is_ember": spec.is_ember, "spec": spec}
    reason = skip_reason(spec)
    if reason:
        entry["skipped"] = reason
    return entry


def _run_round(entry: dict[str, Any], job: dict[str, Any], runners: Path, round_index: int) -> None:
    """One process of this engine; its timed runs join those of earlier rounds."""
    logger.info("running %s (round %d)", entry["name"], round_index + 1)
    load = os.getloadavg()[0]
    result = run_engine(entry["spec"], job, runners)
    result["load_average"] = [load]
    if "error" in result:
        logger.warning("%s failed: %s", entry["name"], result["error"])
    previous = entry.get("result")
    if previous is None or "error" in previous:
        entry["result"] = result
        return
    if "error" in result:
        return
    previous["load_average"].append(load)
    previous["peak_rss_mb"] = max(previous["peak_rss_mb"], result["peak_rss_mb"])
    for name, run in result.get("corpora", {}).items():
        merged = previous["corpora"][name]
        merged["times_s"] += run["times_s"]
        merged["median_s"] = statistics.median(merged["times_s"])
    for key in ("p50_ms", "p99_ms", "mean_ms"):  # latency: keep the median round
        if key in result:
            previous.setdefault(f"{key}_rounds", [previous[key]]).append(result[key])
            previous[key] = statistics.median(previous[f"{key}_rounds"])


def ember_source() -> str:
    """Where the benchmarked Ember comes from: its folder and git commit (EMBER_BENCH_COMMIT for exports)."""
    import subprocess

    import ember

    folder = Path(ember.__file__).resolve().parents[2]
    commit = os.environ.get("EMBER_BENCH_COMMIT")
    if not commit:
        proc = subprocess.run(["git", "-C", str(folder), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=False)
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "src"],
                               capture_output=True, text=True, check=False).stdout.strip()
        commit = proc.stdout.strip() + (" + uncommitted changes in src/" if dirty else "")
    return f"{folder} @ {commit or 'unknown'}"


def _corpus_info(cfg: BenchConfig, texts: list[str]) -> dict[str, Any]:
    counts = token_counts(cfg.model, texts, cfg.max_len)
    return {"n": len(texts), "tokens": sum(counts), "mean_tokens": statistics.fmean(counts),
            "fingerprint": corpus.fingerprint(texts),
            "mean_words": statistics.fmean(len(t.split()) for t in texts)}


def _add_reference(report: dict[str, Any], job: dict[str, Any], runners: Path) -> None:
    """fp32 sentence-transformers embeddings: the st-fp32 peer's, else a run in this interpreter."""
    for entry in report["engines"]:
        if entry["name"] == "st-fp32" and "corpora" in entry.get("result", {}):
            report["reference"] = {k: v["embeddings"] for k, v in entry["result"]["corpora"].items()}
            return
    logger.info("computing the fp32 sentence-transformers reference in this interpreter")
    result = run_engine(REFERENCE, {**job, "runs": 1}, runners)
    if "corpora" in result:
        report["reference"] = {k: v["embeddings"] for k, v in result["corpora"].items()}


def min_cosine(ours: np.ndarray, ref: np.ndarray) -> float:
    a = ours / np.linalg.norm(ours, axis=1, keepdims=True)
    b = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    return float(np.min(np.sum(a * b, axis=1)))


def _add_metrics(report: dict[str, Any]) -> None:
    """texts/s, tokens/s, roofline share and min cosine per engine and corpus; then peer ratios."""
    peak = report["gemm_peak_gflops"]
    for name, info in report["corpora"].items():
        flops = roofline.flops_per_token(report["model"], info["mean_tokens"])
        info["flops_per_token"] = flops
        ref = np.load(report["reference"][name]) if "reference" in report else None
        for entry in report["engines"]:
            run = entry.get("result", {}).get("corpora", {}).get(name)
            if run is None:
                continue
            tokens_s = info["tokens"] / run["median_s"]
            run.update(texts_s=info["n"] / run["median_s"], tokens_s=tokens_s,
                       roofline_fp32=tokens_s * flops / (peak["fp32"] * 1e9),
                       roofline_bf16=tokens_s * flops / (peak["bf16"] * 1e9) if peak["bf16"] else None,
                       roofline_best=tokens_s * flops / (max(p for p in peak.values() if p) * 1e9))
            if ref is not None:
                run["min_cosine"] = min_cosine(np.load(run["embeddings"]), ref)
        _add_peer_ratios(report, name)


def _add_peer_ratios(report: dict[str, Any], corpus_name: str) -> None:
    runs = [(e, e["result"]["corpora"][corpus_name]) for e in report["engines"]
            if corpus_name in e.get("result", {}).get("corpora", {})]
    peers = [(e, r) for e, r in runs if not e["is_ember"]]
    if not peers:
        return
    best_entry, best = max(peers, key=lambda er: er[1]["texts_s"])
    report["corpora"][corpus_name]["best_peer"] = best_entry["name"]
    for entry, run in runs:
        run["vs_best_peer"] = run["texts_s"] / best["texts_s"]
        # Ember reports what it ran ("auto" may mean int8); peers' own labels differ ("f32"): use the spec's
        precision = (entry.get("result", {}).get("precision") if entry["is_ember"] else None) or entry["precision"]
        same = [r["texts_s"] for e, r in peers if e["precision"] == precision]
        if same:
            run["vs_best_same_precision_peer"] = run["texts_s"] / max(same)
