"""PackedLinear: a float32 or bfloat16 linear layer on oneDNN's GEMM, with its weight packed once at load.

torch's float32 linear is MKL's sgemm. On AMD CPUs MKL takes its AVX2 code path whatever the
CPU has, and it re-lays-out the weight on every call. oneDNN (which torch ships too, and which
vLLM's CPU backend uses) JITs its GEMM for the ISA it finds at run time, and
`mkldnn._reorder_linear_weight` stores the weight once in the blocked layout its kernel reads.
On MiniLM's shapes, 2 threads (bench/results/, BENCHMARKS.md): on a Zen 4 (AVX-512) 1.1-1.4x
MKL at 1024 rows and 1.5-2x at 1-17 rows (a single request); held to AVX2, 1.0-1.2x and
1.2-1.4x. bfloat16 linears are oneDNN's already, on the plain weight (reordered per call): packed,
1.1-1.2x at 1024 rows and 1.4x at 16 (Zen 4, AVX512-BF16). oneDNN packs bfloat16 weights only
where it has a bf16 path (AVX512BW/VL/DQ or AVX-NE-CONVERT: BF16_PACKING_FLAGS; elsewhere its
reorder raises), so a bfloat16 model on an AVX2-only CPU (where bf16 is emulated, never Ember's
own choice) keeps torch's linears.

A PackedLinear is an nn.Linear (the int8 calibration, Int8Linear.from_float and the state dict see
the same weight and bias); its forward multiplies by `weight_packed`, an opaque mkldnn tensor of
the weight's shape. torch.export cannot trace an opaque tensor, and the compiled package holds no
weights anyway: a graph is built under `opaque_weights.placeholders()`, with a plain tensor of the
weight's shape in its place, and the loaded package is handed the packed one (aot_package.py).

The dense weight stays beside the packed one: int8 calibration quantizes it, a template copies it,
and the model stays a plain torch model to whoever reads it. The packed copy costs the linear
weights' memory once more (MiniLM +40 MiB, mpnet +340 MB). Dropping the dense weights at ready
was tried and left out: it broke reading the served model (quantizing it again in a test) and
did not show in the ready RSS (MiniLM float32 579 MiB, against 496 with linear_kernel="aten").
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ember.errors import InvalidRequestError

PACK_ROWS = 1024
"""The row count oneDNN is told to pack for; any other count runs on the same packed weight
(384 -> 1536 at 1, 17, 128 and 1024 rows: within 5% of the best of weights packed for 1, 16, 128 or
1024 rows; the one packed for 1 row was the slowest at every count)."""

BF16_PACKING_FLAGS: tuple[frozenset[str], ...] = (frozenset({"avx512bw", "avx512vl", "avx512dq"}),
                                                 frozenset({"avx_ne_convert"}))
"""/proc/cpuinfo flag sets, any one of which oneDNN's bf16 weight reorder needs."""


def available() -> bool:
    """Whether this torch has oneDNN (x86 and ARM builds of torch do)."""
    return torch.backends.mkldnn.is_available()


def choose(requested: str, flags: set[str], dtype: torch.dtype = torch.float32) -> str:
    """The float linears' kernel for `requested` ("auto", "onednn" or "aten": config.py checks the
    name) on a CPU with /proc/cpuinfo `flags`, for a model in `dtype`: "onednn" or "aten" (torch's
    own). auto: oneDNN on x86 with AVX2 (faster with AVX-512, on par end to end with AVX2 alone,
    faster at a query's few rows on both), else aten (ARM: oneDNN runs through ACL there, not
    measured); bfloat16 only where oneDNN packs it (BF16_PACKING_FLAGS)."""
    if requested == "onednn" and not available():
        raise InvalidRequestError("linear_kernel='onednn' needs a torch built with oneDNN", param="linear_kernel")
    packs_dtype = dtype != torch.bfloat16 or any(needed <= flags for needed in BF16_PACKING_FLAGS)
    if requested == "onednn" and not packs_dtype:
        raise InvalidRequestError("linear_kernel='onednn' with dtype='bfloat16' needs a CPU with AVX512BW/VL/DQ or "
                                  "AVX-NE-CONVERT (oneDNN's bf16 path); use linear_kernel='auto' or 'aten'",
                                  param="linear_kernel")
    if requested == "aten" or not available() or not packs_dtype:
        return "aten"
    return "onednn" if requested == "onednn" or "avx2" in flags else "aten"


class PackedLinear(nn.Linear):
    """nn.Linear whose forward is oneDNN's GEMM on a weight packed once (`weight_packed`)."""

    def __init__(self, linear: nn.Linear) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), PACK_ROWS)
        self.register_buffer("weight_packed", packed, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight_packed, self.bias, "none", [], "")

    def opaque_placeholders(self) -> dict[str, torch.Tensor]:
        """What stands in for the packed weight in a graph's build (opaque_weights.py)."""
        packed = self.weight_packed
        return {"weight_packed": torch.empty(packed.shape, dtype=packed.dtype)} if packed.is_mkldnn else {}


def pack_linears(model: nn.Module, skip: Callable[[str], bool] = lambda path: False) -> int:
    """Replace every float32 or bfloat16 nn.Linear of `model` by a PackedLinear, in place, except
    those whose module path `skip` names; returns how many."""
    replaced = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            path = f"{name}.{child_name}" if name else child_name
            if (type(child) is nn.Linear and child.weight.dtype in (torch.float32, torch.bfloat16)
                    and not skip(path)):
                setattr(module, child_name, PackedLinear(child))
                replaced += 1
    return replaced

