"""ember::encoder_attention: an encoder layer's attention as one op, in Ember's own kernel.

Why: torch's CPU attention (the flash kernel behind SDPA) multiplies through BLAS calls sized
for large head dimensions; at an encoder's head size (32 in MiniLM, 64 in BERT-base) and short
rows it spends most of its time outside the multiply-adds. This kernel (attention.cpp) keeps
q . k and P V in register tiles, reads q, k, v straight from the fused projection and writes
the result in the layout the output projection reads, so two permuted copies disappear too.
Float32 throughout, an exact softmax: equal to SDPA within float32 rounding (tests/kernels).
ember::encoder_attention_narrow runs the two products in a narrower number type, for the int8
model only, whose gate measures it (Kernel.narrow says which):
- "bf16" where the CPU has AVX512-BF16: bf16 pair dot products (float32 accumulators; a float32
  softmax whose exp is a cubic, 8e-5 at worst, below the bf16 rounding of its weights): 1.6-1.8x
  at 4 x 256 tokens;
- "int16" in the AVX2 build and, without AVX512-BF16, in an AVX512-VNNI one (Cascade Lake, Ice
  Lake): int16 pair dot products (vpmaddwd; vpdpwssd with VNNI) of values scaled per row, ~13-15
  bits each (relative error ~2e-4, a tenth of bf16's), for batch rows of 96 keys or more (shorter
  ones run float32: Kernel.narrow_min_keys). At 4 x 256 tokens on a Zen 4: 0.88x the float32 op's
  time held to AVX2 (the served int8 model: 1.03-1.06x passages/s), 0.81x in the AVX512-VNNI build
  (bf16 there: 0.65x). Neither a Zen 3 nor an Intel CPU without BF16 has measured it yet;
- none on AVX-512 without VNNI or BF16 (encoder_attention_narrow is not offered there).
ember::encoder_attention_int8 (and `_int8_narrow`) take the int8 model's fused projection before it
is scaled back to float32: its int32 accumulator, with the row and column terms that dequantize it
(QkvAccumulator). The kernel dequantizes each row as it packs it, so the projection's float32
output is never written and read back (4.7 MB per MiniLM layer at 4 x 256 tokens).

How it is called: in eager mode through ctypes (which releases the GIL); in an AOTInductor
package through its C shims, `aoti_torch_cpu_encoder_attention` (and `..._narrow`), which the
package calls directly (c_shims() is handed to the build; no Python, no dispatcher). `prepare` builds or loads the library
once per process; until it has, and where it cannot (no compiler, no AVX2, a head size that is not
a multiple of two vectors, another dtype), `supports` is False and the model uses SDPA.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ember.kernels import library

SHIM_DECLARATION = ("AOTITorchError aoti_torch_cpu_encoder_attention(AtenTensorHandle qkv, AtenTensorHandle key_mask, "
                    "int64_t num_heads, AtenTensorHandle* ret0)")
NARROW_SHIM_DECLARATION = SHIM_DECLARATION.replace("_encoder_attention(", "_encoder_attention_narrow(")
INT8_SHIM_DECLARATION = ("AOTITorchError aoti_torch_cpu_encoder_attention_int8(AtenTensorHandle acc, "
                         "AtenTensorHandle row_terms, AtenTensorHandle column_terms, AtenTensorHandle key_mask, "
                         "int64_t num_heads, AtenTensorHandle* ret0)")
INT8_NARROW_SHIM_DECLARATION = INT8_SHIM_DECLARATION.replace("_int8(", "_int8_narrow(")
MAX_TERMS = 16
"""Most dequantization terms (QkvAccumulator's T) the kernel takes (attention_rows.h kMaxTerms)."""


class QkvAccumulator(NamedTuple):
    """The fused q/k/v projection of an int8 linear before its epilogue: x[b, s, c] = acc[b, s, c]
    * row_terms[b, s, 0] * column_terms[0, c] + sum_{i >= 1} row_terms[b, s, i] * column_terms[i, c]."""

    acc: torch.Tensor
    """int32 [B, S, 3 H D]"""
    row_terms: torch.Tensor
    """float32 [B, S, T]"""
    column_terms: torch.Tensor
    """float32 [T, 3 H D]"""

    def dequantize(self) -> torch.Tensor:
        """The float32 projection [B, S, 3 H D] (where the kernel does not run)."""
        t, u = self.row_terms, self.column_terms
        return self.acc.float() * t[..., :1] * u[0] + t[..., 1:] @ u[1:]


@dataclass(frozen=True, slots=True)
class Kernel:
    """One build of attention.cpp, loaded."""

    isa: str
    width: int
    """Floats per vector of the build: head sizes must be multiples of two vectors."""
    raw: Callable[..., int]
    """ember_encoder_attention (attention.cpp), the eager entry."""
    raw_int8: Callable[..., int]
    """ember_encoder_attention_int8, the eager entry from an int32 accumulator."""
    library: ctypes.CDLL
    narrow: str | None
    """The products of its narrow variant: "bf16" (a CPU with AVX512-BF16), "int16" (the AVX2
    build, and AVX512-VNNI without BF16) or None (AVX-512 without either)."""
    narrow_min_keys: int = 0
    """Batch rows with fewer keys (up to the last one the mask keeps) run float32 in the narrow
    variant: int16's per-row scaling costs more than it saves below 96."""

    def supports(self, head_dim: int, dtype: torch.dtype) -> bool:
        return dtype == torch.float32 and 0 < head_dim <= 256 and head_dim % (2 * self.width) == 0

    def run(self, qkv: torch.Tensor, key_mask: torch.Tensor, num_heads: int, narrow: bool = False) -> torch.Tensor:
        """The op's computation (contiguous copies of non-contiguous inputs); narrow: the narrow
        variant's."""
        qkv, key_mask = qkv.contiguous(), key_mask.contiguous()
        batch, seq, width = qkv.shape
        head_dim = self._head_dim(width, num_heads, qkv.dtype, narrow)
        out = qkv.new_empty(batch, seq, width // 3)
        self.raw(qkv.data_ptr(), key_mask.data_ptr(), out.data_ptr(), batch, seq, num_heads, head_dim,
                 qkv.stride(0), qkv.stride(1), key_mask.stride(0), int(narrow))
        return out

    def run_int8(self, x: QkvAccumulator, key_mask: torch.Tensor, num_heads: int, narrow: bool = False) -> torch.Tensor:
        """run() on the projection's accumulator (contiguous copies of the inputs)."""
        acc, row_terms, column_terms = (t.contiguous() for t in x)
        key_mask = key_mask.contiguous()
        batch, seq, width = acc.shape
        head_dim = self._head_dim(width, num_heads, torch.float32, narrow)
        out = torch.empty(batch, seq, width // 3)
        status = self.raw_int8(acc.data_ptr(), row_terms.data_ptr(), column_terms.data_ptr(), column_terms.shape[0],
                               key_mask.data_ptr(), out.data_ptr(), batch, seq, num_heads, head_dim, acc.stride(0),
                               acc.stride(1), key_mask.stride(0), int(narrow))
        if status != 0:
            raise ValueError(f"the {self.isa} attention kernel refused the accumulator (status {status}: "
                             f"{column_terms.shape[0]} terms, at most {MAX_TERMS})")
        return out

    def _head_dim(self, width: int, num_heads: int, dtype: torch.dtype, narrow: bool) -> int:
        """The head size of a [.., width = 3 H D] projection, if this build runs it (else ValueError)."""
        head_dim = width // (3 * num_heads)
        if not self.supports(head_dim, dtype):
            raise ValueError(f"head size {head_dim} ({dtype}) is not supported by the {self.isa} attention kernel")
        if narrow and not self.narrow:
            raise ValueError(f"the {self.isa} attention kernel has no narrow variant (AVX-512 without VNNI or BF16)")
        return head_dim


def load_kernel(isa: library.VectorIsa, cache_dir: str, exported: bool = False) -> Kernel | None:
    """The kernel built for `isa`, with bf16 products where the CPU has AVX512-BF16, else int16
    ones where it has AVX512-VNNI (None if it
    cannot be built here); `exported`: its shim answers compiled graphs (library.load)."""
    if isa == library.AVX512 and {"avx512_bf16", "avx512bw"} <= library.cpu_flags():
        isa = library.AVX512_BF16
    elif isa == library.AVX512 and {"avx512_vnni", "avx512bw"} <= library.cpu_flags():
        isa = library.AVX512_VNNI  # int16 products with vpdpwssd
    lib = library.load_bound("attention", isa, cache_dir, exported)
    if lib is None:
        return None
    raw = lib.ember_encoder_attention
    raw.restype = ctypes.c_int32
    raw.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 7 + [ctypes.c_int32]
    raw_int8 = lib.ember_encoder_attention_int8
    raw_int8.restype = ctypes.c_int32
    raw_int8.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] + [ctypes.c_void_p] * 2 + [ctypes.c_int64] * 7 + [
        ctypes.c_int32]
    narrow = {0: None, 1: "bf16", 2: "int16"}[lib.ember_attention_narrow_products()]
    lib.ember_attention_narrow_min_keys.restype = ctypes.c_int64
    return Kernel(isa.name, isa.width, raw, raw_int8, lib, narrow, lib.ember_attention_narrow_min_keys())


_process: library.ProcessKernel[Kernel] = library.ProcessKernel(load_kernel)
"""The kernel this process's models use."""


def prepare(cache_dir: str) -> str:
    """Build or load the kernel for this CPU (once per process); returns mode()."""
    _process.prepare(cache_dir)
    return mode()


def mode() -> str:
    """What runs an encoder's attention in this process: "ember-<isa>" or "sdpa" (cache keys and
    stats say it)."""
    return f"ember-{_process.kernel.isa}" if _process.kernel is not None else "sdpa"


def supports(head_dim: int, dtype: torch.dtype, narrow: bool = False) -> bool:
    """Whether encoder_attention (narrow: encoder_attention_narrow) runs in the kernel for this
    head size and dtype."""
    kernel = _process.kernel
    return kernel is not None and kernel.supports(head_dim, dtype) and (kernel.narrow is not None or not narrow)


def c_shims() -> dict[object, list[str]]:
    """aot_inductor.custom_ops_to_c_shims for a build whose graph may call the kernel."""
    kernel = _process.kernel
    if kernel is None:
        return {}
    shims = {torch.ops.ember.encoder_attention.default: [SHIM_DECLARATION],
             torch.ops.ember.encoder_attention_int8.default: [INT8_SHIM_DECLARATION]}
    if kernel.narrow:
        shims[torch.ops.ember.encoder_attention_narrow.default] = [NARROW_SHIM_DECLARATION]
        shims[torch.ops.ember.encoder_attention_int8_narrow.default] = [INT8_NARROW_SHIM_DECLARATION]
    return shims


def _check(qkv: torch.Tensor, key_mask: torch.Tensor, num_heads: int, dtype: torch.dtype = torch.float32) -> None:
    """The static part of the contract (dtypes, ranks, the last dimension): what the fake
    implementation can check without guarding on the dynamic batch and sequence sizes. dtype: the
    projection's (int32 for the accumulator's ops)."""
    if qkv.dim() != 3 or qkv.dtype != dtype or num_heads <= 0 or qkv.shape[-1] % (3 * num_heads):
        name, type_name = ("qkv", "float32") if dtype == torch.float32 else ("acc", "int32")
        raise ValueError(f"{name} must be {type_name} [batch, seq, 3 * {num_heads} heads * head_dim], got {qkv.dtype} "
                         f"{list(qkv.shape)}")
    if key_mask.dtype != torch.bool or key_mask.dim() != 2:
        raise ValueError(f"key_mask must be bool [batch, seq], got {key_mask.dtype} {list(key_mask.shape)}")


def _kernel(op: str) -> Kernel:
    if _process.kernel is None:
        raise RuntimeError(f"ember::{op} called before kernels.attention.prepare() loaded the kernel")
    return _process.kernel


def _check_int8(acc: torch.Tensor, row_terms: torch.Tensor, column_terms: torch.Tensor, key_mask: torch.Tensor,
                num_heads: int) -> None:
    """_check for the accumulator's ops: acc int32 [B, S, 3 H D], its terms float32."""
    _check(acc, key_mask, num_heads, torch.int32)
    if (row_terms.dtype != torch.float32 or column_terms.dtype != torch.float32 or row_terms.dim() != 3
            or column_terms.dim() != 2 or column_terms.shape[1] != acc.shape[-1]
            or row_terms.shape[-1] != column_terms.shape[0] or not 1 <= column_terms.shape[0] <= MAX_TERMS):
        raise ValueError(f"row_terms must be float32 [batch, seq, T] and column_terms float32 [T, {acc.shape[-1]}], "
                         f"1 <= T <= {MAX_TERMS}, "
                         f"got {row_terms.dtype} {list(row_terms.shape)}, {column_terms.dtype} "
                         f"{list(column_terms.shape)}")


def _check_rows(x: torch.Tensor, key_mask: torch.Tensor) -> None:
    if key_mask.shape != x.shape[:2]:
        raise ValueError(f"key_mask must be [batch, seq] = {list(x.shape[:2])}, got {list(key_mask.shape)}")


@torch.library.custom_op("ember::encoder_attention", mutates_args=())
def encoder_attention(qkv: torch.Tensor, key_mask: torch.Tensor, num_heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) over the keys key_mask keeps) v per head, from qkv [B, S, 3 H d]
    laid out (3, H, d) in its last dimension; returns [B, S, H d]. The rows of a batch row past its
    last kept key are 0 (SDPA would fill them; nothing downstream reads them)."""
    _check(qkv, key_mask, num_heads)
    _check_rows(qkv, key_mask)
    return _kernel("encoder_attention").run(qkv, key_mask, num_heads)


def _fake(qkv: torch.Tensor, key_mask: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The float ops' shape and checks, for tracing (both variants)."""
    _check(qkv, key_mask, num_heads)
    return qkv.new_empty(qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3)


encoder_attention.register_fake(_fake)


@torch.library.custom_op("ember::encoder_attention_narrow", mutates_args=())
def encoder_attention_narrow(qkv: torch.Tensor, key_mask: torch.Tensor, num_heads: int) -> torch.Tensor:
    """encoder_attention with q.k and P.V as bf16 or int16 pair dot products (Kernel.narrow;
    float32 accumulators, scores and softmax): half the multiply instructions. For the int8 model,
    whose gate measures it (runner/int8); only where the build has them (supports(..., narrow=True))."""
    _check(qkv, key_mask, num_heads)
    _check_rows(qkv, key_mask)
    return _kernel("encoder_attention_narrow").run(qkv, key_mask, num_heads, narrow=True)


encoder_attention_narrow.register_fake(_fake)


@torch.library.custom_op("ember::encoder_attention_int8", mutates_args=())
def encoder_attention_int8(acc: torch.Tensor, row_terms: torch.Tensor, column_terms: torch.Tensor,
                           key_mask: torch.Tensor, num_heads: int) -> torch.Tensor:
    """encoder_attention of QkvAccumulator(acc, row_terms, column_terms).dequantize(), which the
    kernel computes row by row as it packs q, k and v (float32 products)."""
    _check_int8(acc, row_terms, column_terms, key_mask, num_heads)
    _check_rows(acc, key_mask)
    return _kernel("encoder_attention_int8").run_int8(QkvAccumulator(acc, row_terms, column_terms), key_mask, num_heads)


def _fake_int8(acc: torch.Tensor, row_terms: torch.Tensor, column_terms: torch.Tensor, key_mask: torch.Tensor,
               num_heads: int) -> torch.Tensor:
    """The accumulator ops' shape and checks, for tracing (both variants)."""
    _check_int8(acc, row_terms, column_terms, key_mask, num_heads)
    return row_terms.new_empty(acc.shape[0], acc.shape[1], acc.shape[2] // 3)


encoder_attention_int8.register_fake(_fake_int8)


@torch.library.custom_op("ember::encoder_attention_int8_narrow", mutates_args=())
def encoder_attention_int8_narrow(acc: torch.Tensor, row_terms: torch.Tensor, column_terms: torch.Tensor,
                                  key_mask: torch.Tensor, num_heads: int) -> torch.Tensor:
    """encoder_attention_int8 with encoder_attention_narrow's products."""
    _check_int8(acc, row_terms, column_terms, key_mask, num_heads)
    _check_rows(acc, key_mask)
    return _kernel("encoder_attention_int8_narrow").run_int8(QkvAccumulator(acc, row_terms, column_terms), key_mask,
                                                              num_heads, narrow=True)


encoder_attention_int8_narrow.register_fake(_fake_int8)
