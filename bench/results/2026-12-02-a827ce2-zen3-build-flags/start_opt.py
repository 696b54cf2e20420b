"""First start (fresh caches) of LLM(MiniLM) with the kernels' -O level from argv[1]; then passages/s."""
import os, sys, time, tempfile
t0 = time.perf_counter()
level = sys.argv[1]
tmp = tempfile.mkdtemp()
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tmp + "/ind"
os.environ["TMPDIR"] = tmp
os.environ["HF_HUB_OFFLINE"] = "1"
import torch._inductor.cpp_builder as cb
orig = cb._get_optimization_cflags
def patched(cpp_compiler, min_optimize=False):
    c, l = orig(cpp_compiler, min_optimize)
    if not min_optimize:
        c = [level if f == "O3" else f for f in c]
    return c, l
cb._get_optimization_cflags = patched
from ember import LLM
from ember.bench.corpus import passages, short_texts
llm = LLM("sentence-transformers/all-MiniLM-L6-v2", compile_cache_dir=tmp + "/cache", long_inputs="truncate")
ready = time.perf_counter() - t0
p = passages(128); s = short_texts(512)
llm.embed(p[:16])
best_p = best_s = 0
for _ in range(3):
    a = time.perf_counter(); llm.embed(p); best_p = max(best_p, len(p) / (time.perf_counter() - a))
    a = time.perf_counter(); llm.embed(s); best_s = max(best_s, len(s) / (time.perf_counter() - a))
print(f"{level}: ready {ready:.1f} s, passages/s {best_p:.1f}, short/s {best_s:.0f}")
