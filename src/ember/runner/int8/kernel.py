"""Which int8 GEMM an Int8Linear runs, chosen once per CPU from the features it reports.

Two kernels, both called from inside the AOT-compiled graph (no Python on the request path):

- "int_mm": `torch._int_mm`, int8 x int8 -> int32, in Ember's int8_mm kernel where it runs
  (kernels/int8_mm.py: the same int32 products). With int8 dot-product instructions (AVX512-VNNI,
  AVX-VNNI, AMX) _int_mm is oneDNN's VNNI GEMM; without them it is a reference loop (2-3 GOP/s on a
  Zen 3 against MKL float32's 74-130 GFLOP/s), so there int_mm is the default only where Ember's
  AVX2 build is loaded and multiplies every row (int16 products, exact for 8-bit activations).
- "onednn": `onednn::qlinear_pointwise` on a weight prepacked by `onednn::qlinear_prepack` (uint8
  activations x int8 weights, the output scaled per channel to float32). On AVX2 without VNNI
  oneDNN multiplies with vpmaddubsw, which adds two u8 x s8 products into an int16 and saturates:
  with 8-bit activations MiniLM-like rows lost ~1% of the output's norm. With activations on 7 bits
  (0..127) a pair stays below 2^15, and the products are exact; the linear fed by the GELU stays
  float32 (ONEDNN.float_linears). Per-token activation ranges stay:
  the rows are quantized by the graph itself (fused with what produced them) and handed over with
  a scale of 1, so the kernel's per-tensor activation scale costs nothing. The default on an AVX2
  CPU only where Ember's AVX2 int8_mm is not loaded (torch held below AVX2, the build failed).

AMX (amx_int8) and ARM (NEON dot product / i8mm) are planned in docs/int8.md; on a CPU with neither
kernel's instructions int8 is not the default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ember.errors import InvalidRequestError

FLOAT_HEADS = ("head.", "sparse_head.")
"""Module paths of the heads, which stay float32 under int8 (linears and activations): they run
once per row, after the compiled layers."""

INT8_DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
"""/proc/cpuinfo flags of CPUs with int8 dot-product instructions, which make _int_mm fast."""


@dataclass(frozen=True, slots=True)
class Int8Kernel:
    name: str
    """"int_mm" or "onednn"."""
    activation_levels: int
    """Steps of the per-token activation grid: 255 (8 bits) or 127 (7 bits)."""
    float_linears: tuple[str, ...] = ()
    """Linears (by attribute name) that stay in float32 with this kernel."""

    @property
    def label(self) -> str:
        """The kernel and the linears it keeps in float32, e.g. "int_mm" or "onednn-float-ffn_out":
        what the cache keys and the engine's stats say runs."""
        return "-".join([self.name, *(f"float-{linear}" for linear in self.float_linears)])

    def stricter(self) -> Int8Kernel | None:
        """The same kernel with STRICTER_FLOAT_LINEARS in float32 too (None when it already keeps
        them): the second rung the gate tries when this one lands too close to its bar."""
        extra = tuple(linear for linear in STRICTER_FLOAT_LINEARS if linear not in self.float_linears)
        return dataclasses.replace(self, float_linears=self.float_linears + extra) if extra else None

    def quantizes(self, name: str) -> bool:
        """Whether the linear at module path `name` runs in int8 with this kernel. Heads
        (`head.`, `sparse_head.`) stay float32: they run once per row, after the compiled layers."""
        return not name.startswith(FLOAT_HEADS) and name.rsplit(".", 1)[-1] not in self.float_linears

    def pack(self, weight_int8: torch.Tensor) -> torch.Tensor:
        """What the graph multiplies by, from the [in, out] int8 weight: the weight itself for
        int_mm, oneDNN's blocked layout for onednn (an opaque mkldnn tensor of the same shape)."""
        if self.name == "int_mm":
            return weight_int8
        return torch.ops.onednn.qlinear_prepack(weight_int8.t().contiguous(), None)

    def graph_constants(self) -> dict[str, torch.Tensor]:
        """Tensors AOTInductor adds to a graph of this kernel by itself, by name: the lowering of
        qlinear_pointwise turns its scalar activation scale and zero point into constants, which a
        package built without its constants must be handed like the weights."""
        if self.name == "int_mm":
            return {}
        return {"x_scale": torch.tensor(1.0), "x_zp": torch.tensor(0, dtype=torch.int32)}


STRICTER_FLOAT_LINEARS = ("ffn_out",)
"""What the stricter rung keeps in float32: ffn_out, fed by the GELU (4x the hidden width, a few
large values per row), carries most of the int8 error in every encoder measured (docs/int8.md)."""

INT_MM = Int8Kernel("int_mm", 255)
ONEDNN = Int8Kernel("onednn", 127, float_linears=("ffn_out",))
"""ffn_out, whose input is the GELU's output, stays float32: on 7 bits its per-token range (a few
large values over 1536 mostly tiny ones) cost the most. MiniLM, min cosine vs float32 (probe set /
bench short texts / passages): every linear in int8 0.9992 / 0.9986 / 0.9988; ffn_out in float32
0.9995 / 0.9993 / 0.9994. Neither 32 outlier channels, nor 8-bit activations with 7-bit weights
(255 x 63 also stays below int16), nor wider SmoothQuant alphas reached that for ffn_out in int8."""
KERNELS = {k.name: k for k in (INT_MM, ONEDNN)}


def choose_kernel(requested: str, flags: set[str], avx2_int8_mm: bool) -> Int8Kernel | None:
    """The kernel for `requested` ("auto", "int_mm" or "onednn") on a CPU with `flags`; for "auto"
    None when no kernel is fast here (int8 is then not the default). int_mm where _int_mm is fast
    (int8 dot products) or `avx2_int8_mm`, Ember's exact AVX2 build of it, is loaded
    (kernels/int8_mm.py; without it int_mm would be a reference loop there); else onednn on AVX2."""
    if requested != "auto":
        if requested not in KERNELS:
            raise InvalidRequestError(f"int8_kernel must be 'auto', 'int_mm' or 'onednn', got {requested!r}",
                                      param="int8_kernel")
        if requested == "onednn" and not torch.backends.mkldnn.is_available():
            raise InvalidRequestError("int8_kernel='onednn' needs a torch built with oneDNN", param="int8_kernel")
        return KERNELS[requested]
    if any(flag in flags for flag in INT8_DOT_PRODUCT_FLAGS):
        return INT_MM
    if avx2_int8_mm:
        return INT_MM
    if "avx2" in flags and torch.backends.mkldnn.is_available():
        return ONEDNN
    return None
