"""The quality gate: the int8 model's lowest cosine against float32 on the probe texts."""

from __future__ import annotations

import torch

from ember.errors import EmberError


class QuantizationQualityError(EmberError):
    """The int8 model's outputs are too far from the fp32 model's on the probe set."""


def lowest_cosine(reference: torch.Tensor, quantized: torch.Tensor) -> float:
    """The lowest cosine between matching rows."""
    return float(torch.nn.functional.cosine_similarity(reference.float(), quantized.float(), dim=-1).min())


def enforce_gate(measured: float, min_cosine: float) -> float:
    """Returns `measured`; raises QuantizationQualityError when it is below min_cosine."""
    if measured < min_cosine:
        raise QuantizationQualityError(
            f"int8 quantization refused: on the built-in probe set its embeddings reach a min cosine of "
            f"{measured:.8f} against float32, below quantization_min_cosine={min_cosine}; run without "
            f"quantization (or lower --quantization-min-cosine if that quality is acceptable)"
        )
    return measured
