"""p50 / p90 of 200 single-text LLM.embed calls after 10 warm-up calls; argv[1]: LLM kwargs as a
Python literal (e.g. '{"threads": 1}'); OMP_WAIT_POLICY from the environment."""
import ast
import os
import sys
import time

from ember import LLM
from ember.bench.corpus import short_texts

kwargs = ast.literal_eval(sys.argv[1]) if len(sys.argv) > 1 else {}
llm = LLM("sentence-transformers/all-MiniLM-L6-v2", **kwargs)
texts = short_texts(210)
for text in texts[:10]:
    llm.embed([text])
times = []
for text in texts[10:]:
    start = time.perf_counter()
    llm.embed([text])
    times.append((time.perf_counter() - start) * 1e3)
times.sort()
print(kwargs, os.environ.get("OMP_WAIT_POLICY"), f"p50 {times[100]:.2f} p90 {times[180]:.2f}", llm.stats().get("threads"))
