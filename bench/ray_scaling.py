"""Ray Data with 1 and 2 actors against single-process LLM.embed, on the same texts, in one run.

    flock /tmp/ember-bench.lock .venv/bin/python bench/ray_scaling.py --rows 40000 --out-dir bench/results/<dir>

Each configuration runs --rounds times in alternation; the table gives medians. "texts/s" is rows
over the whole call (for Ray: from the dataset's definition to its last row, actor startup from a
warm compile cache included); "steady texts/s" is the rows after the first output batch over the
time after it, i.e. without startup. LLM.embed's engine is built before its clock starts, so its
two figures are the same.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from ember.bench import corpus


def single_process(model: str | None, texts: list[str], threads: int) -> dict:
    from ember import LLM

    llm = LLM(model, threads=threads)
    start = time.perf_counter()
    llm.embed(texts)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "texts_per_s": len(texts) / seconds, "steady_texts_per_s": len(texts) / seconds}


def on_ray(model: str | None, texts: list[str], actors: int, cpus_per_actor: float) -> dict:
    import ray

    import ember.ray

    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)], override_num_blocks=200)
    ds = ds.materialize()  # the input in the object store before the clock starts
    start = time.perf_counter()
    out = ember.ray.embed_dataset(ds, model, num_actors=actors, cpus_per_actor=cpus_per_actor, batch_size=200,
                                  fill_compile_cache=False)
    rows, first_at, first_rows = 0, None, 0
    for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
        rows += len(batch["id"])
        if first_at is None:
            first_at, first_rows = time.perf_counter(), rows
    seconds = time.perf_counter() - start
    assert rows == len(texts), rows
    steady = (rows - first_rows) / (time.perf_counter() - start - (first_at - start))
    return {"seconds": seconds, "texts_per_s": rows / seconds, "steady_texts_per_s": steady,
            "startup_to_first_batch_s": first_at - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=40000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default=None)
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args()
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    short = corpus.load("short", 8192)
    texts = [short[i % len(short)] for i in range(args.rows)]
    from ember import LLM

    LLM(args.model)  # fills the compile cache: every configuration below starts warm
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    configs = {"LLM.embed, 1 process, 2 threads": lambda: single_process(args.model, texts, 2),
               "Ray Data, 1 actor x 2 CPUs": lambda: on_ray(args.model, texts, 1, 2),
               "Ray Data, 2 actors x 1 CPU": lambda: on_ray(args.model, texts, 2, 1)}
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    for _ in range(args.rounds):
        for name, fn in configs.items():
            runs[name].append(fn())
            print(name, runs[name][-1], flush=True)
    ray.shutdown()
    base = statistics.median(r["steady_texts_per_s"] for r in runs["LLM.embed, 1 process, 2 threads"])
    lines = [f"# Ray Data scaling, {args.rows} short texts, default model, medians of {args.rounds}", "",
             "| configuration | texts/s (startup included) | steady texts/s | vs LLM.embed (steady) | "
             "startup to first batch |", "|---|---|---|---|---|"]
    for name, rs in runs.items():
        total = statistics.median(r["texts_per_s"] for r in rs)
        steady = statistics.median(r["steady_texts_per_s"] for r in rs)
        first = statistics.median(r.get("startup_to_first_batch_s", 0.0) for r in rs)
        lines.append(f"| {name} | {total:.0f} | {steady:.0f} | {steady / base:.2f}x | {first:.1f} s |")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    (out / f"ray-scaling-{stamp}.json").write_text(json.dumps(runs, indent=1))
    (out / f"ray-scaling-{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
