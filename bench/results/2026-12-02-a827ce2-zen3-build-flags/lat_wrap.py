import os, sys, time, tempfile
level = sys.argv[1]
tmp = tempfile.mkdtemp()
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tmp + "/ind"; os.environ["HF_HUB_OFFLINE"] = "1"
from ember.runner import aoti_build
aoti_build.AOTI_SETTINGS["aot_inductor.compile_wrapper_opt_level"] = level
from ember import LLM
from ember.bench.corpus import short_texts
t0 = time.perf_counter()
llm = LLM("sentence-transformers/all-MiniLM-L6-v2", compile_cache_dir=tmp + "/cache")
ready = time.perf_counter() - t0
texts = short_texts(410)
res = []
for rep in range(2):
    for t in texts[:10]: llm.embed([t])
    ts = []
    for t in texts[10:]:
        s = time.perf_counter(); llm.embed([t]); ts.append((time.perf_counter() - s) * 1e3)
    ts.sort(); res.append(ts[len(ts)//2])
print(f"wrapper {level}: ready {ready:.1f} s, p50 ms {res}")
