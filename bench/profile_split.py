"""Where an `embed` call's time goes (issue 6: "what limits it now"): GEMM / attention / other
model ops / tokenization / the rest of the engine (Python: scheduling, batching, pooling).

    flock /tmp/ember-bench.lock .venv/bin/python bench/profile_split.py [--corpus passages] [--quantization auto|int8|none]

Two measurements, both on the same texts, after one untimed pass:
1. The engine as served (compiled, `LLM()`): wall time of `embed`, split by timers wrapped around
   the tokenizer and the compiled forward. Median of --reps calls.
2. Inside the forward: one of the served model's layers, compiled by inductor (torch.compile:
   the code generator the AOT package uses) with `cpp.enable_kernel_profile`, so that each fused
   kernel reports its time to torch.profiler. It runs on a batch of the corpus's shape (median
   token length, as many rows as the engine's token budget holds), 20 calls. Split: GEMM
   (`_int_mm`, MKL), attention (SDPA), the fused elementwise kernels (each named), the rest.
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

GEMM_OPS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::_int_mm", "aten::matmul", "onednn::qlinear_pointwise", "ember::int8_linear",
            "mkldnn::_linear_pointwise", "ember::int8_mm")
ATTENTION_OPS = ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math",
                 "aten::_softmax", "ember::encoder_attention", "ember::encoder_attention_bf16",
                 "ember::encoder_attention_int8", "ember::encoder_attention_int8_bf16")
ELEMENTWISE_OPS = ("ember::int8_gelu_requantize",)
"""Ember's own elementwise kernels, counted with inductor's fused ones."""


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


def served_split(llm: LLM, texts: list[str], reps: int, single: bool = False) -> dict[str, float]:
    """Seconds of one `embed` of all texts (single: the sum of one `embed` per text), by part."""
    runner = llm.engine.runner
    forward, tokenize = Stopwatch(), Stopwatch()
    runner._forward = forward.wrap(runner._forward)  # instance attributes shadow the methods
    runner.tokenizer.encode_batch = tokenize.wrap(runner.tokenizer.encode_batch)
    calls = [[t] for t in texts] if single else [texts]

    def embed() -> None:
        for call in calls:
            llm.embed(call, truncate_prompt_tokens=-1)
    embed()
    runs = []
    for _ in range(reps):
        forward.seconds = tokenize.seconds = 0.0
        start = time.perf_counter()
        embed()
        wall = time.perf_counter() - start
        runs.append({"wall": wall, "forward": forward.seconds, "tokenize": tokenize.seconds})
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def kernel_split(llm: LLM, texts: list[str], calls: int = 20, single: bool = False) -> tuple[Counter[str], tuple[int, int], float]:
    """Seconds per layer call by kernel group (and per fused kernel), the batch shape, and the
    wall time per call of the compiled layer. single: a batch of one text (a search query)."""
    import torch._inductor.config as inductor_config

    runner = llm.engine.runner
    limit = runner.info.max_model_len
    lengths = sorted(len(t.token_ids) for t in runner.tokenizer.encode_batch(texts, [limit] * len(texts)))
    seq = lengths[len(lengths) // 2]
    batch = 1 if single else max(1, min(runner.plan.max_batch, runner.plan.max_tokens // seq))
    hidden = torch.randn(batch, seq, runner.info.hidden_size)
    mask = torch.ones(batch, 1, 1, seq, dtype=torch.bool)
    # freezing: the oneDNN kernel's prepacked weight must be a graph constant for its lowering.
    with inductor_config.patch({"cpp.enable_kernel_profile": True, "freezing": True}), torch.no_grad():
        layer = torch.compile(runner.model.layers[0], dynamic=False)
        for _ in range(3):
            layer(hidden, mask)
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                layer(hidden, mask)
        per_call = (time.perf_counter() - start) / calls
    groups: Counter[str] = Counter()
    for event in prof.key_averages():
        seconds = event.self_cpu_time_total / 1e6 / calls
        if event.key in GEMM_OPS:
            groups["GEMM"] += seconds
        elif event.key in ATTENTION_OPS:
            groups["attention"] += seconds
        elif "cpp_fused" in event.key or event.key in ELEMENTWISE_OPS:
            groups["fused elementwise"] += seconds
            groups["kernel " + (event.key.split("cpp_fused_", 1)[1][:60] if "cpp_fused" in event.key else event.key)] += seconds
    return groups, (batch, seq), per_call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", choices=["short", "passages"], default="passages")
    parser.add_argument("--n", type=int, default=None, help="texts (default 512 short / 128 passages)")
    parser.add_argument("--quantization", choices=["auto", "int8", "none"], default="auto",
                        help="auto (the default: int8 where the CPU has a fast int8 kernel), int8, or none (float)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--single", action="store_true",
                        help="one text per call (the latency case): embed each text alone, and split a batch of one")
    args = parser.parse_args()
    texts = corpus.load(args.corpus, args.n or (512 if args.corpus == "short" else 128))

    llm = LLM(quantization=None if args.quantization == "none" else args.quantization)
    quantization = llm.stats()["quantization"]
    served = served_split(llm, texts, args.reps, single=args.single)
    groups, shape, per_call = kernel_split(llm, texts, single=args.single)
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
    print(f"Inside the forward: one layer compiled by inductor, batch {shape[0]} x {shape[1]} tokens, "
          f"{1e3 * per_call:.2f} ms per call (profiled), by kernel:")
    print()
    print("| kernels | ms per layer call | share |")
    print("|---|---|---|")
    rest = per_call - groups["GEMM"] - groups["attention"] - groups["fused elementwise"]
    for name, seconds in (("GEMM", groups["GEMM"]), ("attention (SDPA or Ember's)", groups["attention"]),
                          ("fused elementwise (inductor, Ember)", groups["fused elementwise"]), ("the rest (launch, Python)", rest)):
        print(f"| {name} | {1e3 * seconds:.3f} | {100 * seconds / per_call:.1f}% |")
    kernels = sorted(((s, k[7:]) for k, s in groups.items() if k.startswith("kernel ")), reverse=True)
    for seconds, name in kernels:
        print(f"| - `{name}` | {1e3 * seconds:.3f} | {100 * seconds / per_call:.1f}% |")


if __name__ == "__main__":
    main()
