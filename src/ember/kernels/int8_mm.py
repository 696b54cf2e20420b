"""ember::int8_mm: torch._int_mm(a, weight) in Ember's own kernel, on a weight packed once at load.

Two builds of int8_mm.cpp, one per CPU class; both are exactly _int_mm, the same int32 accumulator
bit for bit, so the int8 model's vectors do not depend on which runs.

- AVX512-VNNI, for the few rows of a single request. An int8 encoder layer runs four int8 GEMMs.
  torch._int_mm hands them to oneDNN with the plain [K, N] weight, which oneDNN reorders for its
  VNNI kernel on every call: at a batch of 1024 rows that is nothing, at the 16 rows of one search
  query it is most of the call (MiniLM's four GEMMs per layer: ~0.16 ms at 16 rows, where the
  arithmetic needs ~0.06). This build multiplies by a weight packed in the layout vpdpbusd reads.
  At MiniLM's shapes on 2 cores it took 0.4-0.8x of _int_mm's time up to 64 rows and 0.9-1.0x up to
  256; above 256 rows (the batches of a throughput run) it is on par or a little slower, so its C
  shim hands those to torch's _int_mm and the op is never slower than the one it replaces.
- AVX2 without int8 dot products (AMD Zen 2/3, older Intel), for every row count: there _int_mm
  is a reference loop (2-3 GOP/s), and oneDNN's int8 kernel (the `onednn` int8 kernel) multiplies
  bytes with vpmaddubsw, whose saturating int16 sums need 7-bit activations. This build widens
  both operands to int16 and multiplies with vpmaddwd, exact for 8-bit activations, so the
  int_mm kernel's quality (8-bit rows, every linear in int8) holds on AVX2. On a Zen 4 held to
  AVX2, 2 threads, MiniLM's shapes: 1.4-2.0x oneDNN's AVX2 u8 x s8 linear at 16 rows, 2.8-4.5x at
  one row, 0.8-0.9x at 256-1024 rows (oneDNN's time includes scaling its output to float32). With
  ffn_out in int8 the model is on par at batches and takes 0.71x the time for one text (docs/int8.md).
  Not for a CPU with AVX-VNNI (256-bit), whose _int_mm is oneDNN's VNNI kernel.

The int8 model keeps the packed weight beside the int8 one (MiniLM: +11 MB). Called like the
other kernels (attention.py): eager through ctypes, compiled graphs through its C shim
`aoti_torch_cpu_int8_mm`; `supports()` is False until `prepare` has loaded it.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ember.kernels import library

logger = logging.getLogger(__name__)

SHIM_DECLARATION = ("AOTITorchError aoti_torch_cpu_int8_mm(AtenTensorHandle a, AtenTensorHandle weight, "
                    "AtenTensorHandle packed, AtenTensorHandle compensation, AtenTensorHandle* ret0)")
PANEL = 64
"""Weight columns per packed panel of the AVX512-VNNI build (int8_mm.cpp)."""
PANEL_AVX2 = 16
"""Weight columns per packed panel of the AVX2 build."""
MAX_K = 65792
"""Largest K whose accumulator (with the +128 offset of the unsigned operand) stays in int32."""


def build_for(isa: library.VectorIsa | None, flags: set[str]) -> library.VectorIsa | None:
    """The build of the kernel for a process whose torch runs `isa` on a CPU with `flags`:
    AVX512_VNNI, AVX2, or None (no build: _int_mm multiplies)."""
    if isa == library.AVX512 and {"avx512_vnni", "avx512bw"} <= flags:
        return library.AVX512_VNNI
    if isa in (library.AVX2, library.AVX512) and "avx2" in flags and "avx_vnni" not in flags:
        return library.AVX2
    return None


def planned_build() -> library.VectorIsa | None:
    """build_for this process (known before the kernel is built: it decides the packed layout)."""
    return build_for(library.vector_isa(), library.cpu_flags())


def shape_supported(in_features: int, out_features: int) -> bool:
    """Whether the kernel multiplies by a [in_features, out_features] weight."""
    return 0 < in_features <= MAX_K and in_features % 4 == 0 and out_features > 0 and out_features % 16 == 0


def pack(weight: torch.Tensor, build: library.VectorIsa | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The packed weight and compensation (int32 [N] = -128 * sum_k w[k, n], which the VNNI build
    starts its accumulators from) of an int8 [K, N] weight, for `build` (default: this process's):
    - AVX512-VNNI: int8 [N / 64 panels (rounded up), K / 4 * 256], holding for each panel and each
      group of 4 rows the panel's columns with their 4 bytes side by side;
    - AVX2: int8 [N / 16 panels, K * 16], holding for each panel and each pair of rows the
      panel's columns with their two bytes side by side (the kernel widens them to int16)."""
    in_features, out_features = weight.shape
    if weight.dtype != torch.int8 or not shape_supported(in_features, out_features):
        raise ValueError(f"weight must be int8 [K, N] with K % 4 == 0 and N % 16 == 0, got {weight.dtype} "
                         f"{list(weight.shape)}")
    compensation = (weight.sum(0, dtype=torch.int32) * -128).to(torch.int32).contiguous()
    if (build or planned_build()) == library.AVX2:
        # [K/2, 2, panel, column] -> [panel, K/2, column, 2]
        pairs = weight.reshape(in_features // 2, 2, out_features // PANEL_AVX2, PANEL_AVX2)
        packed = pairs.permute(2, 0, 3, 1).contiguous()
        return packed.reshape(packed_shape(in_features, out_features, library.AVX2)), compensation
    panels = -(-out_features // PANEL)
    padded = torch.zeros(in_features, panels * PANEL, dtype=torch.int8)
    padded[:, :out_features] = weight
    # [K/4, 4, panel, vector, column] -> [panel, K/4, vector, column, 4]
    blocked = padded.reshape(in_features // 4, 4, panels, PANEL // 16, 16).permute(2, 0, 3, 4, 1)
    return blocked.reshape(packed_shape(in_features, out_features, library.AVX512_VNNI)).contiguous(), compensation


def packed_shape(in_features: int, out_features: int, build: library.VectorIsa | None = None) -> tuple[int, int]:
    """The shape of pack's packed weight for a [in_features, out_features] weight."""
    if (build or planned_build()) == library.AVX2:
        return out_features // PANEL_AVX2, in_features * PANEL_AVX2
    return -(-out_features // PANEL), in_features // 4 * PANEL * 4


@dataclass(frozen=True, slots=True)
class Kernel:
    """The build of int8_mm.cpp, loaded, on a CPU that runs it."""

    build: library.VectorIsa
    raw: Callable[..., int]
    """ember_int8_mm (int8_mm.cpp), the eager entry."""
    max_rows: int
    """Rows up to which the kernel multiplies (above, _int_mm)."""
    library: ctypes.CDLL

    def run(self, a: torch.Tensor, weight: torch.Tensor, packed: torch.Tensor, compensation: torch.Tensor,
            ) -> torch.Tensor:
        if a.shape[0] > self.max_rows:
            return torch._int_mm(a, weight)
        a = a.contiguous()
        out = torch.empty(a.shape[0], weight.shape[1], dtype=torch.int32)
        status = self.raw(a.data_ptr(), a.shape[0], a.shape[1], packed.contiguous().data_ptr(),
                          compensation.contiguous().data_ptr(), weight.shape[1], out.data_ptr())
        if status != 0:
            raise ValueError(f"int8_mm does not support K={a.shape[1]}, N={weight.shape[1]}")
        return out


def load_kernel(isa: library.VectorIsa, cache_dir: str, flags: set[str] | None = None,
                exported: bool = False) -> Kernel | None:
    """The kernel's build for a process whose torch runs `isa` on a CPU with `flags` (default:
    this CPU's), if there is one (build_for) and it builds here; else None. `exported`: its shim
    answers compiled graphs (library.load; the two builds' shims share a name)."""
    build = build_for(isa, library.cpu_flags() if flags is None else flags)
    lib = library.load_bound("int8_mm", build, cache_dir, exported) if build is not None else None
    if lib is None:
        if build == library.AVX2:
            logger.warning("without Ember's AVX2 int8_mm kernel, int8_kernel='auto' runs oneDNN's 7-bit kernel "
                           "(ffn_out in float32), and an explicit 'int_mm' torch._int_mm, a reference loop here")
        return None
    raw = lib.ember_int8_mm
    raw.restype = ctypes.c_int32
    raw.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                    ctypes.c_void_p]
    lib.ember_int8_mm_max_rows.restype = ctypes.c_int64
    return Kernel(build, raw, lib.ember_int8_mm_max_rows(), lib)


_process: library.ProcessKernel[Kernel] = library.ProcessKernel(load_kernel)
"""The kernel this process's int8 models use."""


def prepare(cache_dir: str) -> str:
    """Build or load the kernel for this CPU (once per process); returns mode()."""
    _process.prepare(cache_dir)
    return mode()


def mode() -> str:
    """What multiplies an int8 linear: "ember-avx512-vnni" (a few rows), "ember-avx2" or "torch"."""
    return f"ember-{_process.kernel.build.name}" if _process.kernel is not None else "torch"


def avx2_build_runs(cache_dir: str) -> bool:
    """Whether this process multiplies int8 with the AVX2 build (built, ~0.4 s, or loaded now)."""
    if planned_build() != library.AVX2:
        return False
    prepare(cache_dir)
    return _process.kernel is not None and _process.kernel.build == library.AVX2


def supports() -> bool:
    return _process.kernel is not None


def c_shims() -> dict[object, list[str]]:
    """aot_inductor.custom_ops_to_c_shims for a build whose graph may call the kernel."""
    return {torch.ops.ember.int8_mm.default: [SHIM_DECLARATION]} if _process.kernel is not None else {}


def _check(a: torch.Tensor, weight: torch.Tensor, packed: torch.Tensor, compensation: torch.Tensor) -> None:
    if a.dim() != 2 or a.dtype != torch.int8 or weight.dim() != 2 or weight.dtype != torch.int8 \
            or weight.shape[0] != a.shape[1]:
        raise ValueError(f"a must be int8 [M, K] and weight int8 [K, N], got {a.dtype} {list(a.shape)} and "
                         f"{weight.dtype} {list(weight.shape)}")
    in_features, out_features = weight.shape
    if not shape_supported(in_features, out_features):
        raise ValueError(f"weight must have K % 4 == 0 and N % 16 == 0, got {list(weight.shape)}")
    expected = packed_shape(in_features, out_features, _process.kernel.build if _process.kernel is not None else None)
    if packed.dtype != torch.int8 or tuple(packed.shape) != expected:
        raise ValueError(f"packed must be int8 {list(expected)} (int8_mm.pack), got {packed.dtype} {list(packed.shape)}")
    if compensation.dtype != torch.int32 or tuple(compensation.shape) != (out_features,):
        raise ValueError(f"compensation must be int32 [{out_features}], got {compensation.dtype} "
                         f"{list(compensation.shape)}")


@torch.library.custom_op("ember::int8_mm", mutates_args=())
def int8_mm(a: torch.Tensor, weight: torch.Tensor, packed: torch.Tensor, compensation: torch.Tensor) -> torch.Tensor:
    """torch._int_mm(a, weight): int8 [M, K] x int8 [K, N] -> int32 [M, N], with weight's
    int8_mm.pack (packed, compensation) beside it."""
    _check(a, weight, packed, compensation)
    if _process.kernel is None:
        raise RuntimeError("ember::int8_mm called before kernels.int8_mm.prepare() loaded the kernel")
    return _process.kernel.run(a, weight, packed, compensation)


@int8_mm.register_fake
def _(a: torch.Tensor, weight: torch.Tensor, packed: torch.Tensor, compensation: torch.Tensor) -> torch.Tensor:
    _check(a, weight, packed, compensation)
    return a.new_empty(a.shape[0], weight.shape[1], dtype=torch.int32)
