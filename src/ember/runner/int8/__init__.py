"""int8 mode: every linear runs as an int8 GEMM on activations quantized per token at run time,
with float32 outlier channels and SmoothQuant smoothing calibrated on frozen built-in texts,
behind a quality gate measured at load. The kernel is chosen per CPU (kernel.py): `_int_mm` on
CPUs with int8 dot products (VNNI, AMX), oneDNN's u8 x s8 GEMM on 7-bit activations on AVX2.

    kernel.py       which GEMM, per CPU
    linear.py       Int8Linear, RationalGELU
    calibration.py  the frozen texts, what each linear sees, the best Int8Linear per linear
    store.py        the calibrated layers on disk
    gate.py         the lowest cosine against float32, and the refusal
    mode.py         Int8Mode: the lifecycle the ModelRunner drives
"""

from __future__ import annotations

from ember.runner.int8.gate import QuantizationQualityError, keeps_rung, score_agreement
from ember.runner.int8.kernel import FLOAT_HEADS, INT_MM, ONEDNN, Int8Kernel, choose_kernel
from ember.runner.int8.mode import Int8Mode

__all__ = ["FLOAT_HEADS", "INT_MM", "ONEDNN", "Int8Kernel", "Int8Mode", "QuantizationQualityError", "choose_kernel",
           "keeps_rung", "resolve_quantization", "score_agreement"]


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
