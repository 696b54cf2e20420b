"""Inductor's precompiled headers: an AOT build uses them where they exist and never builds them."""

from __future__ import annotations

import os
import subprocess
import sys


def test_a_build_uses_precompiled_headers_where_they_exist_and_never_builds_them(tiny_bert, tmp_path):
    script = f"""
import logging
from pathlib import Path
from ember import LLM
from ember.runner import aoti_build
from torch._inductor import codecache
logging.basicConfig(level=logging.DEBUG)
folder = Path(codecache._HEADER_DIR)
def built():
    return sorted(p.name for p in folder.glob("*.h.gch")) if folder.is_dir() else []
LLM({str(tiny_bert)!r}, compile_cache_dir={str(tmp_path / "first")!r}, quantization=None)
print("BUILT-BY-AN-ENGINE", built())
aoti_build.build_precompiled_headers()
print("BUILT-ON-REQUEST", built())
LLM({str(tiny_bert)!r}, compile_cache_dir={str(tmp_path / "second")!r}, quantization=None)
print("BUILT-AFTER", built())
"""
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # inductor's header folder lives under it
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                            check=False, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    by_engine = next(line for line in lines if line.startswith("BUILT-BY-AN-ENGINE"))
    on_request = next(line for line in lines if line.startswith("BUILT-ON-REQUEST"))
    after = next(line for line in lines if line.startswith("BUILT-AFTER"))
    assert by_engine == "BUILT-BY-AN-ENGINE []"  # the first engine's build found none and built none
    assert on_request.count(".h.gch") == 2  # the wrapper's header and the kernels' preamble
    assert after.removeprefix("BUILT-AFTER") == on_request.removeprefix("BUILT-ON-REQUEST")
    # The build runs in a forked child that logs to the same stderr. The first engine did not look
    # for headers (there were none); the second found both.
    assert result.stderr.count("precompiled header") == 2, result.stderr[-3000:]
    assert result.stderr.count(": used") == 2 and "missing, not built" not in result.stderr
