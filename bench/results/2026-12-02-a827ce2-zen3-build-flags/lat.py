"""p50 / p90 of 200 single-text LLM.embed calls after 10 warm-up calls; argv[1]: LLM kwargs as a
Python literal (e.g. '{"threads": 1}'); OMP_WAIT_POLICY from the environment."""
import ast
import os
import sys
import time


def single_call_ms(llm, texts: list[str], warmup: int = 10) -> list[float]:
    """Milliseconds of each one-text call over texts[warmup:], sorted, after `warmup` untimed calls."""
    for text in texts[:warmup]:
        llm.embed([text])
    times = []
    for text in texts[warmup:]:
        start = time.perf_counter()
        llm.embed([text])
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)


if __name__ == "__main__":
    from ember import LLM
    from ember.bench.corpus import short_texts

    kwargs = ast.literal_eval(sys.argv[1]) if len(sys.argv) > 1 else {}
    llm = LLM("sentence-transformers/all-MiniLM-L6-v2", **kwargs)
    times = single_call_ms(llm, short_texts(210))
    print(kwargs, os.environ.get("OMP_WAIT_POLICY"), f"p50 {times[100]:.2f} p90 {times[180]:.2f}",
          llm.stats().get("threads"))
