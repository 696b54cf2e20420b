"""The quality gate: the int8 model's lowest cosine against float32 on the probe texts."""

from __future__ import annotations

import torch

from ember.errors import EmberError


class QuantizationQualityError(EmberError):
    """The int8 model's outputs are too far from the fp32 model's on the probe set."""


def lowest_cosine(reference: torch.Tensor, quantized: torch.Tensor) -> float:
    """The lowest cosine between matching rows, in float64: in float32 two vectors a few 1e-8
    apart read exactly 1.0 (seen on a tiny model), which no gate below 1 can tell from equality."""
    return float(torch.nn.functional.cosine_similarity(reference.double(), quantized.double(), dim=-1).min())


def score_agreement(reference: torch.Tensor, quantized: torch.Tensor) -> float:
    """Classifiers' gate: 1 - the largest difference between matching scores (probabilities in
    [0, 1] after the model's activation), so that the same bar (0.999: no score moves by more
    than 0.001) holds scores to what cosines hold vectors to."""
    return 1.0 - float((reference.float() - quantized.float()).abs().max())


HEADROOM = 0.25
"""A rung with more linears in int8 is kept only at min_cosine + HEADROOM * (1 - min_cosine) or
above (0.99925 for the default 0.999), since the probe set's lowest cosine under-reads a larger
corpus' tail: all-mpnet-base-v2 with every linear in int8 read 0.99917 on the probes and 0.9975 on
256 benchmark texts; with ffn_out in float32, 0.99976 and 0.99961. MiniLM (every linear in int8)
reads 0.99937 on the probes and 0.99933 on the benchmark texts, and keeps its faster rung."""


def keeps_rung(measured: float, min_cosine: float) -> bool:
    """Whether a rung that has a stricter one after it is good enough to stop at."""
    return measured >= min_cosine + HEADROOM * (1.0 - min_cosine)


def enforce_gate(measured: float, min_cosine: float, measure: str = "lowest cosine") -> float:
    """Returns `measured`; raises QuantizationQualityError when it is below min_cosine."""
    if measured < min_cosine:
        raise QuantizationQualityError(
            f"int8 quantization refused: on the built-in probe set its {measure} against float32 is "
            f"{measured:.8f}, below quantization_min_cosine={min_cosine}; run without quantization (or lower "
            f"--quantization-min-cosine if that quality is acceptable)"
        )
    return measured
