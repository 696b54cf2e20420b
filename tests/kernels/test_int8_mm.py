"""Ember's int8 GEMM (ember/kernels/int8_mm.py): exactly torch._int_mm in both builds (AVX512-VNNI
for a few rows, AVX2 for every row count), each loaded where the CPU runs it, used by the int8
model's linears (same vectors as _int_mm), refusing bad inputs by name; the compiled graph calls it
through its C shim."""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from ember import LLM, kernels
from ember.kernels import int8_mm, library
from ember.runner.int8.kernel import INT_MM
from ember.runner.int8.linear import Int8Linear
from tests.kernels import RUNS_INT8_MM, builds

SMALL = {"max_num_seqs": 8, "quantization": "int8", "int8_kernel": "int_mm", "quantization_min_cosine": 0.5}


def _operands(rows: int, k: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(rows * 7 + k * 3 + n)
    a = torch.randint(-128, 128, (rows, k), dtype=torch.int8, generator=generator)
    return a, torch.randint(-128, 128, (k, n), dtype=torch.int8, generator=generator)


@pytest.mark.parametrize(("isa", "flags", "build"), [
    (library.AVX512, {"avx2", "avx512f", "avx512bw", "avx512_vnni"}, library.AVX512_VNNI),
    (library.AVX512, {"avx2", "avx512f", "avx512bw"}, library.AVX2),  # AVX-512 without VNNI
    (library.AVX2, {"avx2", "avx512f", "avx512bw", "avx512_vnni"}, library.AVX2),  # a run held to AVX2
    (library.AVX2, {"avx2"}, library.AVX2),  # Zen 2/3
    (library.AVX2, {"avx2", "avx_vnni"}, None),  # _int_mm is oneDNN's AVX-VNNI kernel there
    (None, {"avx2"}, None),  # torch held below AVX2
])
def test_each_cpu_class_gets_its_build(isa, flags, build):
    assert int8_mm.build_for(isa, flags) == build


def test_it_loads_exactly_where_the_cpu_runs_it(tmp_path):
    isa = library.vector_isa()
    kernel = int8_mm.load_kernel(isa or library.AVX2, str(tmp_path))
    assert (kernel is not None) == (int8_mm.build_for(isa, library.cpu_flags()) is not None)
    assert RUNS_INT8_MM == (kernel is not None and kernel.build == library.AVX512_VNNI)
    if "avx2" in library.cpu_flags() and "avx_vnni" not in library.cpu_flags():  # the AVX2 build runs here too
        held = int8_mm.load_kernel(library.AVX2, str(tmp_path))
        assert held is not None and held.build == library.AVX2 and held.max_rows > 2**40  # never hands over


@pytest.mark.skipif(library.AVX2 not in builds(), reason="the AVX2 build needs an x86 CPU with AVX2")
@pytest.mark.parametrize(("rows", "k", "n"), [(1, 384, 1152), (5, 36, 16), (16, 384, 1536), (7, 1536, 384),
                                              (24, 388, 32), (25, 388, 32), (100, 64, 80), (257, 388, 112),
                                              (1000, 1536, 48), (0, 8, 16)])
def test_the_avx2_build_is_int_mm_bit_for_bit(tmp_path, rows, k, n):
    """Row tiles of 1-6 and blocks of 96 rows, blocks that widen the weight as they load it (up to
    24 rows) and blocks that widen each slice first (25 and more), column blocks of 1-4 panels, K
    over one and several depth steps (388 = 384 + 4), 8-bit operands at both extremes, an empty
    batch."""
    kernel = int8_mm.load_kernel(library.AVX2, str(tmp_path), flags={"avx2"})
    assert kernel is not None
    a, weight = _operands(rows, k, n)
    a[:, :2], weight[:2] = -128, torch.tensor([[-128], [127]], dtype=torch.int8)  # the largest products
    packed, compensation = int8_mm.pack(weight, library.AVX2)
    out = kernel.run(a, weight, packed, compensation)
    assert out.dtype == torch.int32 and torch.equal(out, a.int() @ weight.int())


def test_the_avx2_packed_layout_holds_each_weight_once_as_a_byte():
    """Every weight lands in its (panel of 16 columns, pair of rows, column, row in pair) byte: the
    packed weight is no larger than the int8 one."""
    _, weight = _operands(3, 8, 48)
    packed, _ = int8_mm.pack(weight, library.AVX2)
    assert packed.dtype == torch.int8 and packed.shape == (3, 8 * 16)
    slots = packed.reshape(3, 4, 16, 2)  # [panel, k / 2, column in panel, k % 2]
    for k, n in [(0, 0), (5, 17), (7, 47), (3, 16)]:
        assert slots[n // 16, k // 2, n % 16, k % 2] == weight[k, n]
    assert sorted(slots.flatten().tolist()) == sorted(weight.flatten().tolist())


@pytest.mark.skipif(not RUNS_INT8_MM, reason="the kernel needs AVX512-VNNI (the test above checks it is not loaded)")
@pytest.mark.parametrize(("rows", "k", "n"), [(1, 384, 1152), (5, 36, 16), (16, 384, 1536), (7, 1536, 384),
                                              (100, 64, 80), (256, 32, 112), (257, 32, 48), (0, 8, 16)])
def test_the_product_is_int_mm_bit_for_bit(tmp_path, rows, k, n):
    """Panels with 1-3 vectors in the last one, row tiles of 1-6, the largest row count the kernel
    runs (256) and one above it (torch's _int_mm then), an empty batch."""
    int8_mm.prepare(str(tmp_path))
    a, weight = _operands(rows, k, n)
    packed, compensation = int8_mm.pack(weight)
    out = torch.ops.ember.int8_mm(a, weight, packed, compensation)
    assert out.dtype == torch.int32 and torch.equal(out, a.int() @ weight.int())


def test_the_packed_layout_holds_each_weight_once():
    """Every weight byte lands in its (panel, group of 4 rows, column, row in group) slot; the
    padding of the last panel is 0; the compensation is -128 x the column sums."""
    _, weight = _operands(3, 8, 80)
    packed, compensation = int8_mm.pack(weight, library.AVX512_VNNI)
    assert packed.shape == (2, 8 // 4 * 256)
    slots = packed.reshape(2, 2, 64, 4)  # [panel, k / 4, column in panel, k % 4]
    for k, n in [(0, 0), (5, 17), (7, 79), (3, 64)]:
        assert slots[n // 64, k // 4, n % 64, k % 4] == weight[k, n]
    assert not slots[1, :, 16:, :].any()
    assert torch.equal(compensation, weight.int().sum(0) * -128)


def test_bad_inputs_are_refused_with_what_is_wrong(tmp_path):
    int8_mm.prepare(str(tmp_path))
    a, weight = _operands(4, 32, 32)
    packed, compensation = int8_mm.pack(weight)
    with pytest.raises(ValueError, match="a must be int8"):
        torch.ops.ember.int8_mm(a.float(), weight, packed, compensation)
    with pytest.raises(ValueError, match="weight int8 \\[K, N\\]"):
        torch.ops.ember.int8_mm(a, weight[:16], packed, compensation)
    expected = re.escape(str(list(packed.shape)))  # [1, 2048] on AVX512-VNNI, [2, 1024] on AVX2
    with pytest.raises(ValueError, match=f"packed must be int8 {expected}"):
        torch.ops.ember.int8_mm(a, weight, packed[:, :64], compensation)
    with pytest.raises(ValueError, match="compensation must be int32 \\[32\\]"):
        torch.ops.ember.int8_mm(a, weight, packed, compensation.float())
    with pytest.raises(ValueError, match="K % 4 == 0 and N % 16 == 0"):
        int8_mm.pack(torch.zeros(6, 16, dtype=torch.int8))


@pytest.mark.skipif(int8_mm.planned_build() is None, reason="no build of the kernel for this CPU")
def test_an_int8_linear_gives_what_int_mm_gives(tmp_path, monkeypatch):
    """Same output, bit for bit, with the kernel and with _int_mm; a shape the kernel does not
    take (N % 16 != 0) has no packed weight and runs _int_mm."""
    int8_mm.prepare(str(tmp_path))
    torch.manual_seed(0)
    linear = Int8Linear.from_float(INT_MM, torch.nn.Linear(64, 96), None, torch.arange(2))
    x = torch.randn(2, 9, 64)
    ours = linear(x)
    monkeypatch.setattr(int8_mm, "supports", lambda: False)
    assert torch.equal(ours, linear(x))
    assert not hasattr(Int8Linear.from_float(INT_MM, torch.nn.Linear(64, 40), None), "weight_vnni")


@pytest.mark.skipif(int8_mm.planned_build() != library.AVX512_VNNI,
                    reason="only a VNNI CPU runs both builds (an AVX2 one cannot load the VNNI build)")
def test_a_compiled_graph_finds_the_process_build_never_another_class_build(tmp_path):
    """With the AVX2 build loaded too (as the tests of that build do), the shim a compiled graph
    resolves in the process is the process's VNNI build's: the two share the name
    aoti_torch_cpu_int8_mm and read different packed layouts."""
    other = int8_mm.load_kernel(library.AVX2, str(tmp_path), flags={"avx2"})
    int8_mm.prepare(str(tmp_path))
    own = int8_mm._process.kernel
    assert other is not None and own is not None and other.build != own.build

    def address(lib: ctypes.CDLL) -> int:
        return ctypes.cast(lib.aoti_torch_cpu_int8_mm, ctypes.c_void_p).value

    assert address(ctypes.CDLL(None)) == address(own.library) != address(other.library)


@pytest.mark.skipif(int8_mm.planned_build() is None, reason="no build of the kernel for this CPU")
def test_the_compiled_model_calls_the_shim_and_serves_the_int_mm_vectors(tiny_bert, tmp_path, monkeypatch):
    """A whole-model package calls aoti_torch_cpu_int8_mm; its vectors are the eager model's (which
    runs the same int32 products), on batches below and above the AVX512-VNNI build's 256 rows."""
    texts = [("quick brown fox " * n).strip() for n in range(19, 0, -1)]  # 8 x ~55 tokens: > 256 rows
    compiled = LLM(str(tiny_bert), compile_cache_dir=str(tmp_path), **SMALL)
    assert f"int8_mm=ember-{int8_mm.planned_build().name}" in kernels.mode(int8_kernels=True)  # in the package key
    (package,) = tmp_path.glob("*.pt2")
    with zipfile.ZipFile(package) as archive:
        wrapper = next(archive.read(n).decode() for n in archive.namelist() if n.endswith("wrapper.cpp"))
    assert "aoti_torch_cpu_int8_mm(" in wrapper
    eager = LLM(str(tiny_bert), enforce_eager=True, compile_cache_dir="", **SMALL)
    for batch in (texts[:1], texts):
        ours = np.stack([o.outputs.data for o in compiled.embed(batch)])
        ref = np.stack([o.outputs.data for o in eager.embed(batch)])
        assert ((ours * ref).sum(axis=1) >= 0.9999).all()
    assert compiled.stats()["compiles_after_ready"] == 0


@pytest.mark.skipif(library.AVX2 not in builds() or "avx_vnni" in library.cpu_flags(),
                    reason="needs an x86 CPU with AVX2 whose torch can be held to it (and no AVX-VNNI)")
def test_on_an_avx2_cpu_the_default_runs_int_mm_on_the_avx2_build_or_onednn_without_it(tiny_bert, tmp_path):
    """In a process whose torch runs AVX2 on a CPU without int8 dot products (a Zen 3's; here this
    CPU held to AVX2, its dot-product flags hidden from the engine), the default int8 kernel is
    int_mm on Ember's AVX2 build, every linear in int8, with the vectors of the int8 model's eager
    int32 products; where that build does not load, it is oneDNN's 7-bit kernel, not _int_mm's
    reference loop."""
    texts = [("quick brown fox " * n).strip() for n in range(19, 0, -1)]  # 8 x ~55 tokens: > 256 rows
    options = {k: v for k, v in SMALL.items() if k != "int8_kernel"}
    script = f"""
import json, numpy as np
from ember import LLM, kernels
from ember.kernels import int8_mm, library
from ember.runner import model_runner
flags = library.cpu_flags() - {{"avx512_vnni", "avx_vnni", "amx_int8"}}
library.cpu_flags = model_runner.cpu_flags = lambda: flags
llm = LLM({str(tiny_bert)!r}, compile_cache_dir={str(tmp_path / "cache")!r}, **{options!r})
eager = LLM({str(tiny_bert)!r}, enforce_eager=True, compile_cache_dir="", **{options!r})
vectors = [np.stack([o.outputs.data for o in engine.embed({texts!r})]) for engine in (llm, eager)]
report = {{"mode": kernels.mode(int8_kernels=True), "int8_kernel": llm.stats()["int8_kernel"],
          "min_cosine": float((vectors[0] * vectors[1]).sum(axis=1).min())}}
int8_mm.avx2_build_runs = lambda cache_dir: False  # as if the build had failed
without = LLM({str(tiny_bert)!r}, compile_cache_dir={str(tmp_path / "cache")!r}, **{options!r})
report["without_build"] = without.stats()["int8_kernel"]
print(json.dumps(report))
"""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=False,
                            env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "int8_mm=ember-avx2" in report["mode"] and report["int8_kernel"] == "int_mm"
    assert report["min_cosine"] >= 0.9999
    assert report["without_build"] == "onednn-float-ffn_out"
