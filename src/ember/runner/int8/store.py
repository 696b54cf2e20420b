"""The calibrated int8 layers on disk, with the gate's measurement, so that a restart skips
calibration and the gate's two probe passes. Keyed by the caller like the compiled packages
(the model files, the kernel, the code and texts of this package)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ember.runner.int8.calibration import swap_to_int8
from ember.runner.int8.kernel import Int8Kernel
from ember.runner.int8.linear import Int8Linear

CACHE_FORMAT = 5
"""Version of the stored int8 layers; bump when Int8Linear's buffers change."""


def save_quantized(model: nn.Module, path: Path, min_cosine_measured: float) -> None:
    """Store the int8 layers and the gate's measurement, so the next load skips calibration."""
    state = {name: {b: getattr(module, b) for b in Int8Linear.BUFFERS}
             for name, module in model.named_modules() if isinstance(module, Int8Linear)}
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"format": CACHE_FORMAT, "layers": state, "min_cosine": min_cosine_measured}, scratch)
    os.replace(scratch, path)  # atomic: a concurrent reader sees all or nothing


def load_quantized(model: nn.Module, path: Path, kernel: Int8Kernel) -> float:
    """Swap the model's linears for the stored int8 layers; returns the stored gate measurement.
    Raises (and leaves the model untouched) if the file does not match the model."""
    stored = torch.load(path, weights_only=True)
    layers = stored["layers"]
    if stored.get("format") != CACHE_FORMAT:
        raise ValueError(f"format {stored.get('format')!r}, expected {CACHE_FORMAT}")
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and kernel.quantizes(name)}
    if set(layers) != set(linears):
        raise ValueError("its layers do not match the model's linear layers")
    for name, linear in linears.items():
        if tuple(layers[name]["weight_int8"].shape) != (linear.in_features, linear.out_features):
            raise ValueError(f"layer {name} has another shape than the model's")
    modules = {name: Int8Linear.from_state(kernel, layers[name]) for name in linears}
    swap_to_int8(model, lambda name, _: modules.get(name))
    return float(stored["min_cosine"])
