"""library.ProcessKernel: one load per process, however many threads prepare it at once."""

from __future__ import annotations

import threading
import time

from ember.kernels import library


def test_concurrent_prepares_load_the_kernel_once_and_share_it():
    loads: list[str] = []

    def load(isa: library.VectorIsa, cache_dir: str, exported: bool = False) -> object:
        loads.append(cache_dir)
        time.sleep(0.2)  # a build in progress when the second caller arrives
        return object()

    process = library.ProcessKernel(load)
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(process.prepare("cache"))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected = 1 if library.vector_isa() is not None else 0
    assert len(loads) == expected
    assert len(results) == 3 and all(r is results[0] for r in results)
