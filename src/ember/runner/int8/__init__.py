"""int8 mode: every linear runs as an int8 GEMM on activations quantized per token at run time,
with float32 outlier channels and SmoothQuant smoothing calibrated on frozen built-in texts,
behind a quality gate measured at load. The kernel is chosen per CPU (choose, kernel.py): `_int_mm`
on CPUs with int8 dot products (VNNI, AMX), Ember's AVX2 int8_mm under the same int_mm kernel on
AVX2 without them, and oneDNN's u8 x s8 GEMM on 7-bit activations where that build fails.

    kernel.py       which GEMM, per CPU
    linear.py       Int8Linear, RationalGELU
    calibration.py  the frozen texts, what each linear sees, the best Int8Linear per linear
    store.py        the calibrated layers on disk
    gate.py         the lowest cosine against float32, and the refusal
    mode.py         Int8Mode: the lifecycle the ModelRunner drives
"""

from __future__ import annotations

from ember.kernels import int8_mm, library
from ember.runner.int8.gate import QuantizationQualityError, keeps_rung, score_agreement
from ember.runner.int8.kernel import FLOAT_HEADS, INT_MM, ONEDNN, Int8Kernel, choose_kernel
from ember.runner.int8.mode import Int8Mode

__all__ = ["FLOAT_HEADS", "INT_MM", "ONEDNN", "Int8Kernel", "Int8Mode", "QuantizationQualityError", "choose",
           "choose_kernel", "keeps_rung", "resolve_quantization", "score_agreement"]


def resolve_quantization(requested: str | None, dtype: str, enforce_eager: bool, kernel: Int8Kernel | None,
                         model_allows: bool = True) -> str | None:
    """What quantization="auto" (the default) means: int8 when this CPU has a fast int8 kernel
    (`kernel`, from choose_kernel), the dtype is left to Ember ("auto"), the model is compiled
    (eager int8 runs many small ops and is no faster) and its class allows it (`int8_by_default`);
    else none. Any other value is taken as given."""
    if requested != "auto":
        return requested
    if dtype != "auto" or enforce_eager or not model_allows or kernel is None:
        return None
    return "int8"


def choose(quantization: str | None, dtype: str, enforce_eager: bool, int8_kernel: str, model_allows: bool,
           cache_dir: str) -> tuple[str | None, Int8Kernel | None]:
    """What a model runs: (quantization, int8 kernel): ("int8", the kernel), or (None, None) in
    float. Where int8 would run on an AVX2 CPU without int8 dot products, Ember's AVX2 int8_mm is
    built (first start, ~0.4 s) or loaded first: whether it loads decides if int_mm is fast there
    (without it int_mm is torch's reference loop). int8 asked for without a fast kernel gets the
    portable int_mm."""
    would_run_int8 = resolve_quantization(quantization, dtype, enforce_eager, INT_MM, model_allows) == "int8"
    avx2_int8_mm = would_run_int8 and int8_kernel == "auto" and int8_mm.avx2_build_runs(cache_dir)
    kernel = choose_kernel(int8_kernel, library.cpu_flags(), avx2_int8_mm)
    resolved = resolve_quantization(quantization, dtype, enforce_eager, kernel, model_allows)
    return resolved, ((kernel or INT_MM) if resolved == "int8" else None)
