"""Decoder benchmark (issue 7): Ember vs llama-cpp-python on the same SmolLM2-135M-Instruct GGUF.

Measures, in one process and one run: startup to ready (empty compile cache unless
--compile-cache-dir), first-token latency of the first request vs steady state (median of the
next 10), prefill tokens/s and decode tokens/s at batch 1 and 8 (medians of --reps runs; decode
= generated tokens after the first / (time with N new tokens - time with 1)).
llama-cpp-python's high-level API serves one sequence at a time: its "batch 8" is 8 requests in
a row. Run one benchmark at a time:

    flock /tmp/ember-bench.lock python bench/decoder.py --dtype float32
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

PROMPT_WORDS = ("the quick brown fox jumps over the lazy dog while the search engine embeds every "
                "document into a vector so that a query finds it fast on a small cpu ").split()


def prompts(n: int, words: int) -> list[str]:
    return [" ".join(PROMPT_WORDS[(i + j) % len(PROMPT_WORDS)] for j in range(words)) for i in range(n)]


def bench_ember(args: argparse.Namespace) -> dict:
    from ember import LLM, SamplingParams

    cache_dir = args.compile_cache_dir if args.compile_cache_dir is not None else tempfile.mkdtemp(prefix="ember-cc-")
    start = time.perf_counter()
    llm = LLM("HuggingFaceTB/SmolLM2-135M-Instruct", dtype=args.dtype, max_model_len=1024,
              max_num_batched_tokens=2048, max_num_seqs=8, enforce_eager=args.enforce_eager,
              compile_cache_dir=cache_dir)
    startup = time.perf_counter() - start
    def run(batch: list[str], params: SamplingParams) -> tuple[float, int, int]:
        t = time.perf_counter()
        outs = llm.generate(batch, params)
        return (time.perf_counter() - t, sum(len(o.prompt_token_ids) for o in outs),
                sum(len(o.outputs[0].token_ids) for o in outs))

    return {"startup_s": startup, **measure(run, args), "stats": {k: llm.stats()[k] for k in (
        "compiles_after_ready", "compilation_time_s", "dtype")}}


def bench_llama_cpp(args: argparse.Namespace) -> dict:
    from llama_cpp import Llama

    from ember.model.gguf import find_gguf
    from ember.model.sources import resolve_model_path

    start = time.perf_counter()
    llm = Llama(model_path=str(find_gguf(resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct"))), n_ctx=1024,
                n_threads=args.threads, n_batch=512, verbose=False)
    startup = time.perf_counter() - start
    eos = llm.token_eos()

    def run(batch: list[str], params: int) -> tuple[float, int, int]:
        t = time.perf_counter()
        n_prompt = n_out = 0
        for text in batch:  # no batched generation in the high-level API
            llm.reset()
            out = llm.create_completion(text, max_tokens=params, temperature=0, logit_bias={eos: -1e9})
            n_prompt += out["usage"]["prompt_tokens"]
            n_out += out["usage"]["completion_tokens"]
        return time.perf_counter() - t, n_prompt, n_out

    return {"startup_s": startup, **measure(run, args, one=1, many=args.decode_tokens)}


def measure(run, args: argparse.Namespace, one=None, many=None) -> dict:
    """First-token latency (first call vs median of the next 10), prefill and decode tokens/s."""
    from ember import SamplingParams

    one = one if one is not None else SamplingParams(temperature=0, max_tokens=1)
    many = many if many is not None else SamplingParams(temperature=0, max_tokens=args.decode_tokens,
                                                        ignore_eos=True)
    short = prompts(11, 24)
    first = run(short[:1], one)[0]
    steady = statistics.median(run([p], one)[0] for p in short[1:])
    out = {"first_token_first_request_s": first, "first_token_steady_s": steady}
    for batch in (1, 8):
        batch_prompts = prompts(batch, args.prompt_words)
        run(batch_prompts, one)  # same shapes once more, untimed
        prefill = [run(batch_prompts, one) for _ in range(args.reps)]
        total = [run(batch_prompts, many) for _ in range(args.reps)]
        t_prefill, n_prompt = statistics.median(r[0] for r in prefill), prefill[0][1]
        t_total, n_out = statistics.median(r[0] for r in total), total[0][2]
        out[f"prefill_tok_s_b{batch}"] = n_prompt / t_prefill
        out[f"decode_tok_s_b{batch}"] = (n_out - batch) / max(t_total - t_prefill, 1e-9)
        out[f"prompt_tokens_b{batch}"] = n_prompt // batch
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["ember", "llama-cpp", "both"], default="both")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--prompt-words", type=int, default=200)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3, help="medians over this many timed runs")
    parser.add_argument("--compile-cache-dir", help="default: a fresh empty folder (cold start)")
    args = parser.parse_args()
    results = {}
    if args.engine in ("llama-cpp", "both"):
        results["llama-cpp-python"] = bench_llama_cpp(args)
        print(json.dumps(results["llama-cpp-python"]), flush=True)
    if args.engine in ("ember", "both"):
        results["ember"] = bench_ember(args)
        print(json.dumps(results["ember"]), flush=True)
    print(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
