"""ember::int8_gelu_requantize: the middle of an int8 feed-forward block as one op, in Ember's own kernel.

In an int8 encoder layer, ffn_out(GELU(ffn_in(x))) runs two int8 GEMMs; between them, ffn_in's
int32 accumulator becomes float32 (row and channel scales, bias, float32 outlier channels), goes
through the GELU and is quantized again for ffn_out (smoothing, the row's range, 255 steps, its
outlier channels). Inductor fuses all of that into one loop nest, but keeps the GELU's input in
its row buffer and computes the GELU twice (once for the row's range, once to quantize), divides
per element, and reads ffn_out's outliers with one-hot sums over the row: the biggest elementwise
kernel of a MiniLM int8 layer (~15% of it at 4 x 256 tokens). This kernel (int8_ffn.cpp) computes
the GELU once, keeps the smoothed row in L1, multiplies by the scale's reciprocal and gathers the
outliers. Same arithmetic as the torch ops it replaces (Int8Linear, RationalGELU), up to float32
rounding.

Called like the attention kernel (attention.py): eager through ctypes, compiled graphs through its
C shim `aoti_torch_cpu_int8_gelu_requantize`. Only for the int_mm kernel's grid (255 steps around
128); `supports()` is False until `prepare` has loaded it and where it cannot be built, and the
int8 model then runs the torch ops.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ember.kernels import library

SHIM_DECLARATION = (
    "AOTITorchError aoti_torch_cpu_int8_gelu_requantize(AtenTensorHandle acc, AtenTensorHandle row_scale, "
    "AtenTensorHandle row_low, AtenTensorHandle column_sum, AtenTensorHandle weight_scale, AtenTensorHandle bias, "
    "AtenTensorHandle outliers, AtenTensorHandle outlier_weight, AtenTensorHandle next_inv_smoothing, "
    "AtenTensorHandle next_outlier_columns, AtenTensorHandle* ret0, AtenTensorHandle* ret1, AtenTensorHandle* ret2, "
    "AtenTensorHandle* ret3)")
LEVELS = 255
"""Steps of the activation grid the kernel writes (int_mm's: int8 = step - 128)."""


@dataclass(frozen=True, slots=True)
class Kernel:
    """One build of int8_ffn.cpp, loaded."""

    isa: str
    raw: Callable[..., int]
    """ember_int8_gelu_requantize (int8_ffn.cpp), the eager entry."""
    library: ctypes.CDLL

    def run(self, acc: torch.Tensor, row_scale: torch.Tensor, row_low: torch.Tensor, column_sum: torch.Tensor,
            weight_scale: torch.Tensor, bias: torch.Tensor, outliers: torch.Tensor, outlier_weight: torch.Tensor,
            next_inv_smoothing: torch.Tensor, next_outlier_columns: torch.Tensor,
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The op's computation (contiguous copies of non-contiguous inputs)."""
        inputs = [t.contiguous() for t in (acc, row_scale, row_low, column_sum, weight_scale, bias, outliers,
                                           outlier_weight, next_inv_smoothing, next_outlier_columns)]
        acc, row_scale, row_low, column_sum, weight_scale, bias, outliers, outlier_weight, inv_smoothing, index = inputs
        rows, width = acc.shape
        steps = torch.empty(rows, width, dtype=torch.int8)
        scale, low = torch.empty(rows, 1), torch.empty(rows, 1)
        next_outliers = torch.empty(rows, index.shape[1])
        status = self.raw(acc.data_ptr(), rows, width, row_scale.data_ptr(), row_low.data_ptr(), column_sum.data_ptr(),
                          weight_scale.data_ptr(), bias.data_ptr(), outliers.data_ptr(), outliers.shape[1],
                          outlier_weight.data_ptr(), inv_smoothing.data_ptr(), index.data_ptr(), index.shape[1],
                          steps.data_ptr(), scale.data_ptr(), low.data_ptr(), next_outliers.data_ptr())
        if status != 0:
            raise ValueError(f"next_outlier_columns must lie in [0, {width}), got {index.tolist()[0]}")
        return steps, scale, low, next_outliers


def load_kernel(isa: library.VectorIsa, cache_dir: str, exported: bool = False) -> Kernel | None:
    """The kernel built for `isa` (None if it cannot be built here); `exported`: its shim answers
    compiled graphs (library.load)."""
    lib = library.load_bound("int8_ffn", isa, cache_dir, exported)
    if lib is None:
        return None
    raw = lib.ember_int8_gelu_requantize
    raw.restype = ctypes.c_int32
    raw.argtypes = ([ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64] + [ctypes.c_void_p] * 6 + [ctypes.c_int64]
                    + [ctypes.c_void_p] * 3 + [ctypes.c_int64] + [ctypes.c_void_p] * 4)
    return Kernel(isa.name, raw, lib)


_process: library.ProcessKernel[Kernel] = library.ProcessKernel(load_kernel)
"""The kernel this process's int8 models use."""


def prepare(cache_dir: str) -> str:
    """Build or load the kernel for this CPU (once per process); returns mode()."""
    _process.prepare(cache_dir)
    return mode()


def mode() -> str:
    """What runs the middle of an int8 feed-forward block: "ember-<isa>" or "torch"."""
    return f"ember-{_process.kernel.isa}" if _process.kernel is not None else "torch"


def supports() -> bool:
    return _process.kernel is not None


def c_shims() -> dict[object, list[str]]:
    """aot_inductor.custom_ops_to_c_shims for a build whose graph may call the kernel."""
    return {torch.ops.ember.int8_gelu_requantize.default: [SHIM_DECLARATION]} if _process.kernel is not None else {}


def _check(acc: torch.Tensor, outliers: torch.Tensor, outlier_weight: torch.Tensor,
           next_outlier_columns: torch.Tensor, vectors: tuple[torch.Tensor, ...]) -> None:
    """The static part of the contract: dtypes, ranks, the widths that are not dynamic."""
    if acc.dim() != 2 or acc.dtype != torch.int32:
        raise ValueError(f"acc must be int32 [rows, width], got {acc.dtype} {list(acc.shape)}")
    width = acc.shape[1]
    for name, vector in zip(("column_sum", "weight_scale", "bias", "next_inv_smoothing"), vectors, strict=True):
        if vector.dtype != torch.float32 or vector.shape != (width,):
            raise ValueError(f"{name} must be float32 [{width}], got {vector.dtype} {list(vector.shape)}")
    if outliers.dim() != 2 or outliers.dtype != torch.float32 or outlier_weight.dtype != torch.float32 \
            or outlier_weight.shape != (outliers.shape[1], width):
        raise ValueError(f"outliers must be float32 [rows, k] and outlier_weight [k, {width}], got "
                         f"{list(outliers.shape)} and {list(outlier_weight.shape)}")
    if next_outlier_columns.dim() != 2 or next_outlier_columns.shape[0] != 1 or next_outlier_columns.dtype != torch.int64:
        raise ValueError(f"next_outlier_columns must be int64 [1, k], got {next_outlier_columns.dtype} "
                         f"{list(next_outlier_columns.shape)}")


@torch.library.custom_op("ember::int8_gelu_requantize", mutates_args=())
def int8_gelu_requantize(acc: torch.Tensor, row_scale: torch.Tensor, row_low: torch.Tensor, column_sum: torch.Tensor,
                         weight_scale: torch.Tensor, bias: torch.Tensor, outliers: torch.Tensor,
                         outlier_weight: torch.Tensor, next_inv_smoothing: torch.Tensor,
                         next_outlier_columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """g = RationalGELU((acc * row_scale + (128 row_scale + row_low) column_sum) weight_scale + bias
    + outliers @ outlier_weight), then g quantized for the next Int8Linear: returns its int8 steps
    (step - 128) of g * next_inv_smoothing on the row's [low, low + 255 scale], scale and low
    [rows, 1], and g's values at next_outlier_columns [rows, k]. next_outlier_columns is int64
    [1, k]: 2-d, because inductor inlines 1-d tensors of at most 8 values as literals, and a compiled
    package runs with other weights than it was built from."""
    _check(acc, outliers, outlier_weight, next_outlier_columns, (column_sum, weight_scale, bias, next_inv_smoothing))
    if row_scale.shape != (acc.shape[0], 1) or row_low.shape != (acc.shape[0], 1) or outliers.shape[0] != acc.shape[0]:
        raise ValueError(f"row_scale, row_low must be [{acc.shape[0]}, 1] and outliers [{acc.shape[0]}, k], got "
                         f"{list(row_scale.shape)}, {list(row_low.shape)}, {list(outliers.shape)}")
    if _process.kernel is None:
        raise RuntimeError("ember::int8_gelu_requantize called before kernels.int8_ffn.prepare() loaded the kernel")
    return _process.kernel.run(acc, row_scale, row_low, column_sum, weight_scale, bias, outliers, outlier_weight,
                       next_inv_smoothing, next_outlier_columns)


@int8_gelu_requantize.register_fake
def _(acc: torch.Tensor, row_scale: torch.Tensor, row_low: torch.Tensor, column_sum: torch.Tensor,
      weight_scale: torch.Tensor, bias: torch.Tensor, outliers: torch.Tensor, outlier_weight: torch.Tensor,
      next_inv_smoothing: torch.Tensor, next_outlier_columns: torch.Tensor,
      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _check(acc, outliers, outlier_weight, next_outlier_columns, (column_sum, weight_scale, bias, next_inv_smoothing))
    rows = acc.shape[0]
    return (acc.new_empty(rows, acc.shape[1], dtype=torch.int8), acc.new_empty(rows, 1, dtype=torch.float32),
            acc.new_empty(rows, 1, dtype=torch.float32),
            acc.new_empty(rows, next_outlier_columns.shape[1], dtype=torch.float32))
