"""The AOT package holds code, not weights: the model it is loaded with supplies them."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from ember import LLM
from ember.model.loader import ModelFolder, build_model
from ember.runner.aot_package import _build_beside, layer_stack, load_or_compile
from ember.runner.compile import ShapePlan

PLAN = ShapePlan(max_batch=4, max_seq=32, max_tokens=128)


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[2, 10, 11, 12, 13, 3], [2, 14, 15, 3, 0, 0]])
    mask = (ids != 0).long()
    return ids, mask


@torch.inference_mode()
def test_a_cached_package_runs_with_the_weights_of_the_model_it_is_loaded_with(tiny_bert, tmp_path):
    folder = ModelFolder.read(tiny_bert)
    first = build_model(folder, torch.float32)
    built = load_or_compile(first, PLAN, tmp_path, "key", pad_id=0)
    assert not built.from_cache and built.compile_s > 0

    second = build_model(folder, torch.float32)
    generator = torch.Generator().manual_seed(1)
    for param in second.parameters():
        param.mul_(1 + 0.5 * torch.rand(param.shape, generator=generator))
    loaded = load_or_compile(second, PLAN, tmp_path, "key", pad_id=0)
    assert loaded.from_cache

    ids, mask = _inputs()
    torch.testing.assert_close(built.run(ids, mask), first(ids, mask), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(loaded.run(ids, mask), second(ids, mask), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(loaded.run(ids, mask), built.run(ids, mask), atol=1e-3)


@torch.inference_mode()
def test_one_compiled_layer_serves_every_layer_and_unlike_layers_compile_whole(tiny_bert, tmp_path):
    """compile_scope="layer": BERT's layers share one structure, so one layer is compiled and run
    once per layer with that layer's weights. A model whose layers differ is compiled whole. Both
    compute what the eager model does."""
    folder = ModelFolder.read(tiny_bert)
    model = build_model(folder, torch.float32)
    assert layer_stack(model) is not None and len(model.layers) > 1
    per_layer = load_or_compile(model, PLAN, tmp_path, "key", pad_id=0, per_layer=True)
    assert per_layer.path is not None and per_layer.path.name.startswith("encoder-layer-")
    ids, mask = _inputs()
    torch.testing.assert_close(per_layer.run(ids, mask), model(ids, mask), atol=1e-5, rtol=1e-4)

    unlike = build_model(folder, torch.float32)
    unlike.layers[1].register_buffer("extra", torch.zeros(2))  # one layer with one more tensor
    assert layer_stack(unlike) is None
    whole = load_or_compile(unlike, PLAN, tmp_path, "key", pad_id=0, per_layer=True)
    assert not whole.from_cache and whole.path is not None and whole.path.name.startswith("encoder-model-")
    torch.testing.assert_close(whole.run(ids, mask), unlike(ids, mask), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("fixture", "built"), [("tiny_xlmr", "layer"), ("tiny_qwen3_embedder", "model")])
def test_compile_scope_layer_serves_what_the_whole_model_does(fixture, built, request, tmp_path):
    """Through the engine: RoBERTa (position offsets in the eager embeddings) runs one compiled
    layer; a Llama-style embedder, which has no `embed`, falls back to the whole model."""
    path = str(request.getfixturevalue(fixture))
    texts = ["a short one", "and a longer text " * 6, "x"]
    kwargs = {"quantization": None, "dtype": "float32", "max_num_seqs": 4}  # what compile_scope alone changes
    # Where the layer scope falls back to the whole model, the eager model is the reference (a
    # second whole-model compile would build the same graph again).
    whole = LLM(path, compile_cache_dir=str(tmp_path / "model"), compile_scope="model", enforce_eager=built == "model",
                **kwargs)
    per_layer = LLM(path, compile_cache_dir=str(tmp_path / "layer"), compile_scope="layer", **kwargs)
    vectors = [np.stack([o.outputs.data for o in llm.embed(texts)]) for llm in (whole, per_layer)]
    np.testing.assert_allclose(vectors[1], vectors[0], atol=1e-5, rtol=1e-4)
    assert len(list((tmp_path / "layer").rglob(f"encoder-{built}-*.pt2"))) == 1
    assert per_layer.stats()["is_compiled"] and per_layer.stats()["compiles_after_ready"] == 0


@torch.inference_mode()
def test_a_package_built_for_other_weight_dtypes_is_rebuilt_not_run(tiny_bert, tmp_path, caplog):
    """A stale package (built from other model code under the same key) must not compute garbage."""
    folder = ModelFolder.read(tiny_bert)
    load_or_compile(build_model(folder, torch.float32), PLAN, tmp_path, "key", pad_id=0)
    other = build_model(folder, torch.bfloat16)  # same names, other dtypes and sizes
    with caplog.at_level("WARNING", logger="ember.runner.aot_package"):
        rebuilt = load_or_compile(other, PLAN, tmp_path, "key", pad_id=0)
    assert not rebuilt.from_cache and "expects other dtypes or sizes" in caplog.text
    ids, mask = _inputs()
    torch.testing.assert_close(rebuilt.run(ids, mask).float(), other(ids, mask).float(), atol=2e-2, rtol=2e-2)


@torch.inference_mode()
def test_the_package_shares_the_model_weights_instead_of_copying_them(tiny_bert, tmp_path):
    model = build_model(ModelFolder.read(tiny_bert), torch.float32)
    graph = load_or_compile(model, PLAN, tmp_path, "key", pad_id=0)
    ids, mask = _inputs()
    before = graph.run(ids, mask).clone()
    for param in model.parameters():
        param.mul_(0.5)  # in place: the package sees it only if it holds no copy of its own
    after = graph.run(ids, mask)
    torch.testing.assert_close(after, model(ids, mask), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(after, before, atol=1e-3)


def test_other_threads_run_while_the_compiled_model_runs(tiny_bert, tmp_path):
    """The forward releases the GIL: the server's event loop must not stall behind a batch.

    With a switch interval longer than the whole run, a thread that kept the GIL through its C
    call would give it up only when it ends: the main thread, waking from its short sleeps, could
    then not record a single tick inside a forward. The sleeps keep the main thread off the CPU, so
    the count does not depend on how busy the machine is."""
    import sys
    import threading
    import time

    model = build_model(ModelFolder.read(tiny_bert), torch.float32)
    graph = load_or_compile(model, PLAN, tmp_path, "key", pad_id=0)
    ids = torch.full((PLAN.max_batch, PLAN.max_seq), 10)
    mask = torch.ones_like(ids)
    calls: list[tuple[float, float]] = []
    ticks: list[float] = []

    def forwards() -> None:
        with torch.inference_mode():
            for _ in range(100):
                start = time.perf_counter()
                graph.run(ids, mask)
                calls.append((start, time.perf_counter()))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(60.0)
    try:
        worker = threading.Thread(target=forwards)
        worker.start()
        while worker.is_alive():
            time.sleep(0.0002)
            ticks.append(time.perf_counter())
        worker.join()
    finally:
        sys.setswitchinterval(interval)
    overlapped = sum(any(start < t < end for t in ticks) for start, end in calls)
    assert overlapped >= len(calls) // 2, f"{overlapped} of {len(calls)} forwards overlapped the main thread"


def test_a_build_beside_other_work_runs_in_a_child_and_reports_its_failure(tmp_path):
    """The int8 path builds its graph in a forked child while calibrating: the child's result (a
    file) is there when both are done, its exception is raised in the parent, and the parent's
    exception kills the child instead of waiting for it."""
    from torch._inductor.utils import parallel_num_threads

    target = tmp_path / "built"
    order: list[str] = []
    threads = torch.get_num_threads()

    def build() -> None:  # what the child sees: its pid, and the thread count kernels are built for
        target.write_text(f"{os.getpid()} {parallel_num_threads()}")
    seconds = _build_beside(build, lambda: order.append(f"meanwhile on {torch.get_num_threads()} threads"))
    assert seconds >= 0 and order == [f"meanwhile on {max(1, threads - 1)} threads"]
    pid, kernel_threads = target.read_text().split()
    assert pid != str(os.getpid())  # written by another process
    assert int(kernel_threads) == threads  # the engine's threads, not the child's one
    assert torch.get_num_threads() == threads

    def fail() -> None:
        raise ValueError("no such kernel")
    with pytest.raises(RuntimeError, match="ValueError: no such kernel"):
        _build_beside(fail, lambda: None)

    def calibration_fails() -> None:
        raise KeyError("probe")
    threads = torch.get_num_threads()
    with pytest.raises(KeyError, match="probe"):
        _build_beside(lambda: time.sleep(60), calibration_fails)  # killed, not waited for
    assert torch.get_num_threads() == threads
