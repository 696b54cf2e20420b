"""First LLM() (fresh Ember and inductor caches) with the AOT wrapper compiled at argv[1] ("O0",
"O2"), then the p50 of 400 single-text calls, twice."""
import os
import sys
import tempfile
import time

level = sys.argv[1]
tmp = tempfile.mkdtemp()
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tmp + "/ind"
os.environ["HF_HUB_OFFLINE"] = "1"

from lat import single_call_ms  # noqa: E402 (this folder's lat.py)

from ember import LLM  # noqa: E402 (after the cache folders are set)
from ember.bench.corpus import short_texts  # noqa: E402
from ember.runner import aoti_build  # noqa: E402

aoti_build.AOTI_SETTINGS["aot_inductor.compile_wrapper_opt_level"] = level
start = time.perf_counter()
llm = LLM("sentence-transformers/all-MiniLM-L6-v2", compile_cache_dir=tmp + "/cache")
ready = time.perf_counter() - start
texts = short_texts(410)
medians = [single_call_ms(llm, texts)[200] for _ in range(2)]
print(f"wrapper {level}: ready {ready:.1f} s, p50 ms {medians}")
