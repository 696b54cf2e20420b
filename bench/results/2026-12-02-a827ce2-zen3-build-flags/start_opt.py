"""First start (fresh caches, from the script's start) of LLM(MiniLM) with the kernels compiled at
argv[1] ("O3", "O2", "O1") instead of inductor's -O3; then the best of 3 passes per corpus."""
import os
import sys
import tempfile
import time

start = time.perf_counter()
level = sys.argv[1]
tmp = tempfile.mkdtemp()
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tmp + "/ind"
os.environ["TMPDIR"] = tmp
os.environ["HF_HUB_OFFLINE"] = "1"

import torch._inductor.cpp_builder as cpp_builder  # noqa: E402 (after the cache folders are set)

from ember import LLM  # noqa: E402
from ember.bench.corpus import passages, short_texts  # noqa: E402

inductor_flags = cpp_builder._get_optimization_cflags


def kernels_at_level(cpp_compiler, min_optimize=False):
    cflags, ldflags = inductor_flags(cpp_compiler, min_optimize)
    if not min_optimize:
        cflags = [level if flag == "O3" else flag for flag in cflags]
    return cflags, ldflags


cpp_builder._get_optimization_cflags = kernels_at_level
llm = LLM("sentence-transformers/all-MiniLM-L6-v2", compile_cache_dir=tmp + "/cache", long_inputs="truncate")
ready = time.perf_counter() - start
long_texts, short = passages(128), short_texts(512)
llm.embed(long_texts[:16])
best_passages = best_short = 0.0
for _ in range(3):
    t = time.perf_counter()
    llm.embed(long_texts)
    best_passages = max(best_passages, len(long_texts) / (time.perf_counter() - t))
    t = time.perf_counter()
    llm.embed(short)
    best_short = max(best_short, len(short) / (time.perf_counter() - t))
print(f"{level}: ready {ready:.1f} s, passages/s {best_passages:.1f}, short/s {best_short:.0f}")
