"""Inductor's precompiled headers: an AOT build uses those that exist and builds none."""

from __future__ import annotations

import os
import subprocess
import sys


def test_a_build_uses_the_precompiled_headers_that_exist_and_builds_none(tiny_bert, tmp_path):
    """build_precompiled_headers() makes two (the wrapper's header and the kernels' preamble);
    with one of them removed, an engine's build uses the other and does not build the missing one."""
    script = f"""
import logging
from pathlib import Path
from ember import LLM
from ember.runner import aoti_build
from torch._inductor import codecache
folder = Path(codecache._HEADER_DIR)
def built():
    return sorted(p.name for p in folder.glob("*.h.gch")) if folder.is_dir() else []
print("BEFORE", len(built()))
aoti_build.build_precompiled_headers()
print("BUILT", len(built()))
(folder / built()[0]).unlink()
logging.basicConfig(level=logging.DEBUG)
LLM({str(tiny_bert)!r}, compile_cache_dir={str(tmp_path / "cache")!r}, quantization=None)
print("AFTER", len(built()))
"""
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # inductor's header folder lives under it: empty
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                            check=False, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = dict(line.split() for line in result.stdout.splitlines() if line.split()[:1] in (["BEFORE"], ["BUILT"],
                                                                                               ["AFTER"]))
    assert counts == {"BEFORE": "0", "BUILT": "2", "AFTER": "1"}
    # The build runs in a forked child that logs to the same stderr.
    log = result.stderr
    assert log.count("precompiled header") == 2 and log.count(": used") == 1, log[-3000:]
    assert log.count(": missing, not built") == 1
