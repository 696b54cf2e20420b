import sys, time, statistics, os
from ember import LLM
from ember.bench.corpus import short_texts
kw = eval(sys.argv[1]) if len(sys.argv) > 1 else {}
llm = LLM("sentence-transformers/all-MiniLM-L6-v2", **kw)
texts = short_texts(210)
for t in texts[:10]: llm.embed([t])
ts = []
for t in texts[10:]:
    s = time.perf_counter(); llm.embed([t]); ts.append((time.perf_counter() - s) * 1e3)
ts.sort()
print(kw, os.environ.get("OMP_WAIT_POLICY"), os.environ.get("GOMP_SPINCOUNT"), "p50 %.2f p90 %.2f" % (ts[100], ts[180]), llm.stats().get("threads"))
