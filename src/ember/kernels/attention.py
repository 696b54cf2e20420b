"""ember::encoder_attention: an encoder layer's attention as one op, in Ember's own kernel.

Why: torch's CPU attention (the flash kernel behind SDPA) multiplies through BLAS calls sized
for large head dimensions; at an encoder's head size (32 in MiniLM, 64 in BERT-base) and short
rows it spends most of its time outside the multiply-adds. This kernel (attention.cpp) keeps
q . k and P V in register tiles, reads q, k, v straight from the fused projection and writes
the result in the layout the output projection reads, so two permuted copies disappear too.
Float32 throughout, an exact softmax: equal to SDPA within float32 rounding (tests/kernels).
ember::encoder_attention_bf16, where the CPU has AVX512-BF16, runs the two products as bf16 pair
dot products (float32 accumulators and softmax): 1.6-1.8x at 4 x 256 tokens, for the int8 model
only, whose gate measures it.

How it is called: in eager mode through ctypes (which releases the GIL); in an AOTInductor
package through its C shims, `aoti_torch_cpu_encoder_attention` (and `..._bf16`), which the
package calls directly (c_shims() is handed to the build; no Python, no dispatcher). `prepare` builds or loads the library
once per process; until it has, and where it cannot (no compiler, no AVX2, a head size that is not
a multiple of two vectors, another dtype), `supports` is False and the model uses SDPA.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ember.kernels import library

SHIM_DECLARATION = ("AOTITorchError aoti_torch_cpu_encoder_attention(AtenTensorHandle qkv, AtenTensorHandle key_mask, "
                    "int64_t num_heads, AtenTensorHandle* ret0)")
BF16_SHIM_DECLARATION = SHIM_DECLARATION.replace("_encoder_attention(", "_encoder_attention_bf16(")

@dataclass(frozen=True, slots=True)
class Kernel:
    """One build of attention.cpp, loaded."""

    isa: str
    width: int
    """Floats per vector of the build: head sizes must be multiples of two vectors."""
    raw: Callable[..., int]
    """ember_encoder_attention (attention.cpp), the eager entry."""
    library: ctypes.CDLL
    bf16: bool
    """Whether the build has the bf16 variant (on a CPU with AVX512-BF16)."""

    def supports(self, head_dim: int, dtype: torch.dtype) -> bool:
        return dtype == torch.float32 and 0 < head_dim <= 256 and head_dim % (2 * self.width) == 0

    def run(self, qkv: torch.Tensor, key_mask: torch.Tensor, num_heads: int, bf16: bool = False) -> torch.Tensor:
        """The op's computation (contiguous copies of non-contiguous inputs); bf16: the variant's."""
        qkv, key_mask = qkv.contiguous(), key_mask.contiguous()
        batch, seq, width = qkv.shape
        head_dim = width // (3 * num_heads)
        if not self.supports(head_dim, qkv.dtype):
            raise ValueError(f"head size {head_dim} ({qkv.dtype}) is not supported by the {self.isa} attention kernel")
        out = qkv.new_empty(batch, seq, width // 3)
        if bf16 and not self.bf16:
            raise ValueError(f"the {self.isa} attention kernel has no bf16 variant (the CPU lacks AVX512-BF16)")
        self.raw(qkv.data_ptr(), key_mask.data_ptr(), out.data_ptr(), batch, seq, num_heads, head_dim,
                 qkv.stride(0), qkv.stride(1), key_mask.stride(0), int(bf16))
        return out


def load_kernel(isa: library.VectorIsa, cache_dir: str, exported: bool = False) -> Kernel | None:
    """The kernel built for `isa`, with its bf16 variant where the CPU has AVX512-BF16 (None if it
    cannot be built here); `exported`: its shim answers compiled graphs (library.load)."""
    if isa == library.AVX512 and {"avx512_bf16", "avx512bw"} <= library.cpu_flags():
        isa = library.AVX512_BF16
    lib = library.load_bound("attention", isa, cache_dir, exported)
    if lib is None:
        return None
    raw = lib.ember_encoder_attention
    raw.restype = ctypes.c_int32
    raw.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 7 + [ctypes.c_int32]
    return Kernel(isa.name, isa.width, raw, lib, bool(lib.ember_attention_has_bf16()))


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


def supports(head_dim: int, dtype: torch.dtype, bf16: bool = False) -> bool:
    """Whether encoder_attention (bf16: encoder_attention_bf16) runs in the kernel for this head
    size and dtype."""
    kernel = _process.kernel
    return kernel is not None and kernel.supports(head_dim, dtype) and (kernel.bf16 or not bf16)


def c_shims() -> dict[object, list[str]]:
    """aot_inductor.custom_ops_to_c_shims for a build whose graph may call the kernel."""
    kernel = _process.kernel
    if kernel is None:
        return {}
    shims = {torch.ops.ember.encoder_attention.default: [SHIM_DECLARATION]}
    if kernel.bf16:
        shims[torch.ops.ember.encoder_attention_bf16.default] = [BF16_SHIM_DECLARATION]
    return shims


def _check(qkv: torch.Tensor, key_mask: torch.Tensor, num_heads: int) -> None:
    """The static part of the contract (dtypes, ranks, the last dimension): what the fake
    implementation can check without guarding on the dynamic batch and sequence sizes."""
    if qkv.dim() != 3 or qkv.dtype != torch.float32 or num_heads <= 0 or qkv.shape[-1] % (3 * num_heads):
        raise ValueError(f"qkv must be float32 [batch, seq, 3 * {num_heads} heads * head_dim], got {qkv.dtype} "
                         f"{list(qkv.shape)}")
    if key_mask.dtype != torch.bool or key_mask.dim() != 2:
        raise ValueError(f"key_mask must be bool [batch, seq], got {key_mask.dtype} {list(key_mask.shape)}")


@torch.library.custom_op("ember::encoder_attention", mutates_args=())
def encoder_attention(qkv: torch.Tensor, key_mask: torch.Tensor, num_heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) over the keys key_mask keeps) v per head, from qkv [B, S, 3 H d]
    laid out (3, H, d) in its last dimension; returns [B, S, H d]. The rows of a batch row past its
    last kept key are 0 (SDPA would fill them; nothing downstream reads them)."""
    _check(qkv, key_mask, num_heads)
    if key_mask.shape != qkv.shape[:2]:
        raise ValueError(f"key_mask must be [batch, seq] = {list(qkv.shape[:2])}, got {list(key_mask.shape)}")
    if _process.kernel is None:
        raise RuntimeError("ember::encoder_attention called before kernels.attention.prepare() loaded the kernel")
    return _process.kernel.run(qkv, key_mask, num_heads)


@encoder_attention.register_fake
def _(qkv: torch.Tensor, key_mask: torch.Tensor, num_heads: int) -> torch.Tensor:
    _check(qkv, key_mask, num_heads)
    return qkv.new_empty(qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3)


@torch.library.custom_op("ember::encoder_attention_bf16", mutates_args=())
def encoder_attention_bf16(qkv: torch.Tensor, key_mask: torch.Tensor, num_heads: int) -> torch.Tensor:
    """encoder_attention with q.k and P.V as bf16 dot products (float32 accumulators, scores and
    softmax): half the instructions, ~3 significant digits per product. For the int8 model, whose
    gate measures it (runner/int8); only where the CPU has AVX512-BF16 (supports(..., bf16=True))."""
    _check(qkv, key_mask, num_heads)
    if key_mask.shape != qkv.shape[:2]:
        raise ValueError(f"key_mask must be [batch, seq] = {list(qkv.shape[:2])}, got {list(key_mask.shape)}")
    if _process.kernel is None:
        raise RuntimeError("ember::encoder_attention_bf16 called before kernels.attention.prepare() loaded the kernel")
    return _process.kernel.run(qkv, key_mask, num_heads, bf16=True)


@encoder_attention_bf16.register_fake
def _(qkv: torch.Tensor, key_mask: torch.Tensor, num_heads: int) -> torch.Tensor:
    _check(qkv, key_mask, num_heads)
    return qkv.new_empty(qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3)
