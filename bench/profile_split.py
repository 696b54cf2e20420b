"""Where an `embed` call's time goes (issue 6: "what limits it now"): GEMM / attention / other
model ops / tokenization / the rest of the engine (Python: scheduling, batching, pooling).

    flock /tmp/ember-bench.lock .venv/bin/python bench/profile_split.py [--corpus passages] [--quantization auto|int8|none]

Two measurements, both on the same texts, after one untimed pass:
1. The engine as served (compiled, `LLM()`): wall time of `embed`, split by timers wrapped around
   the tokenizer and the compiled forward. Median of --reps calls.
2. Inside the forward: the AOT-compiled graph runs its fused kernels without reporting them to
   torch.profiler, so the split by operator comes from the same model run eagerly
   (`enforce_eager=True`) under torch.profiler (self CPU time per operator, one call). The eager
   forward is slower than the compiled one (its elementwise ops are not fused), so "other model
   ops" is an upper bound for the compiled graph; GEMM and attention call the same kernels in both.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from ember import LLM
from ember.bench import corpus

GEMM_OPS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::_int_mm", "aten::matmul")
ATTENTION_OPS = ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math",
                 "aten::_softmax")


class Stopwatch:
    """Accumulates the time spent inside a wrapped callable."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
        return timed


def served_split(llm: LLM, texts: list[str], reps: int) -> dict[str, float]:
    runner = llm.engine.runner
    forward, tokenize = Stopwatch(), Stopwatch()
    runner._forward = forward.wrap(runner._forward)  # instance attributes shadow the methods
    runner.tokenizer.encode_batch = tokenize.wrap(runner.tokenizer.encode_batch)
    llm.embed(texts, truncate_prompt_tokens=-1)
    runs = []
    for _ in range(reps):
        forward.seconds = tokenize.seconds = 0.0
        start = time.perf_counter()
        llm.embed(texts, truncate_prompt_tokens=-1)
        wall = time.perf_counter() - start
        runs.append({"wall": wall, "forward": forward.seconds, "tokenize": tokenize.seconds})
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def operator_split(llm: LLM, texts: list[str]) -> tuple[Counter[str], float]:
    llm.embed(texts, truncate_prompt_tokens=-1)
    forward = Stopwatch()
    runner = llm.engine.runner
    runner._forward = forward.wrap(runner._forward)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        llm.embed(texts, truncate_prompt_tokens=-1)
    groups: Counter[str] = Counter()
    for event in prof.key_averages():
        seconds = event.self_cpu_time_total / 1e6
        if event.key in GEMM_OPS:
            groups["GEMM"] += seconds
        elif event.key in ATTENTION_OPS:
            groups["attention"] += seconds
        elif event.key.startswith("aten::"):
            groups["other"] += seconds
    return groups, forward.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", choices=["short", "passages"], default="passages")
    parser.add_argument("--n", type=int, default=None, help="texts (default 512 short / 128 passages)")
    parser.add_argument("--quantization", choices=["auto", "int8", "none"], default="auto",
                        help="auto (the default: int8 where the CPU has VNNI), int8, or none (float)")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    texts = corpus.load(args.corpus, args.n or (512 if args.corpus == "short" else 128))

    llm = LLM(quantization=None if args.quantization == "none" else args.quantization)
    quantization = llm.stats()["quantization"]  # what "auto" ran: the eager twin runs the same
    served = served_split(llm, texts, args.reps)
    del llm
    groups, eager_forward = operator_split(LLM(quantization=quantization, enforce_eager=True), texts)
    ops_total = sum(groups.values())
    engine_rest = served["wall"] - served["forward"] - served["tokenize"]

    print(f"{len(texts)} {args.corpus} texts, quantization={args.quantization} (ran: {quantization}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print()
    print("| part of `embed` (compiled, as served) | s | share |")
    print("|---|---|---|")
    wall = served["wall"]
    for name, seconds in (("compiled forward", served["forward"]), ("tokenization", served["tokenize"]),
                          ("engine: scheduling, batching, pooling (Python)", engine_rest)):
        print(f"| {name} | {seconds:.3f} | {100 * seconds / wall:.1f}% |")
    print(f"| total | {wall:.3f} | 100% |")
    print()
    print(f"Inside the forward, by operator (eager run of the same model: forward {eager_forward:.3f} s, "
          f"{eager_forward / served['forward']:.2f}x the compiled one):")
    print()
    print("| operators | s | share of the operators' time |")
    print("|---|---|---|")
    for name in ("GEMM", "attention", "other"):
        print(f"| {name} | {groups[name]:.3f} | {100 * groups[name] / ops_total:.1f}% |")


if __name__ == "__main__":
    main()
