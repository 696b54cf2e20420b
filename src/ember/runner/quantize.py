"""int8 mode: every linear runs as an int8 x int8 GEMM (VNNI, through `torch._int_mm`), with
activations quantized per token at run time; behind a quality gate measured at load.

Per linear, y = x W^T + b becomes (Int8Linear.forward):
- smoothing (SmoothQuant, Xiao et al. 2022): x is divided per input channel by
  s_j = max|X_j|^a / max|W_j|^(1-a) and W's column j multiplied by it, which moves the range of
  a few outlier channels from the activations into the weights;
- weights: int8, one scale per output channel, quantized once at load;
- activations: int8 per token (row), asymmetric: the row's [min, max] is mapped onto the 256
  int8 steps, so that a row of GELU outputs (all >= -0.17) uses the whole int8 range; computed
  inside the compiled graph, fused with whatever produced x;
- the accumulator is scaled back to float32 with the row and channel scales, plus the row's
  offset times a precomputed column sum of the int8 weights.

All of it is plain torch, so the int8 model is exported and AOT-compiled like the float32 one.
Per linear, `a` is picked from SMOOTHING_ALPHAS as the one with the smallest output error on
calibration inputs captured from the float32 model.

Measured on all-MiniLM-L6-v2 (BENCHMARKS.md, run of 18:43 UTC): min cosine vs float32 0.9988 on
the bench corpora, 1.6-1.7x the float32 throughput. Per-tensor activation scales (fbgemm's dynamic
linear, this mode's first version) reached only 0.99: one scale per tensor spends the int8 range
on its outlier tokens.

The gate: before quantizing, the float32 model embeds a built-in probe set (disjoint from the
calibration texts); after, the int8 model embeds it again, and if the lowest cosine is below
`quantization_min_cosine` the engine refuses to start, saying what it measured.

The int8 layers and that measurement are stored in the compile cache (save_quantized), keyed like
the compiled packages, so a restart skips calibration and the gate's two probe passes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ember.errors import EmberError

logger = logging.getLogger(__name__)

SMOOTHING_ALPHAS: tuple[float | None, ...] = (None, 0.3, 0.5, 0.7, 0.85)
"""Candidates per linear (None: no smoothing). A single alpha for all of MiniLM's linears gave a
min cosine of 0.9966 at best (0.5); the per-linear choice 0.9986."""

SAMPLED_ROWS_PER_CALL = 128
SAMPLED_ROWS_MAX = 2048
"""Calibration inputs kept per linear to pick its alpha (2048 x 1536 floats = 12 MB at most)."""


CACHE_FORMAT = 2
"""Version of the stored int8 layers (save_quantized); bump when Int8Linear's buffers change."""


class QuantizationQualityError(EmberError):
    """The int8 model's outputs are too far from the fp32 model's on the probe set."""


class Int8Linear(nn.Module):
    """A linear layer with int8 weights, run on per-token asymmetric int8 activations."""

    BUFFERS = ("inv_smoothing", "weight_int8", "weight_scale", "weight_column_sum", "bias")

    def __init__(self, inv_smoothing: torch.Tensor, weight_int8: torch.Tensor, weight_scale: torch.Tensor,
                 weight_column_sum: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("inv_smoothing", inv_smoothing)  # [in]
        self.register_buffer("weight_int8", weight_int8)  # [in, out], as _int_mm wants
        self.register_buffer("weight_scale", weight_scale)  # [out]
        self.register_buffer("weight_column_sum", weight_column_sum)  # [out], float32 (exact)
        self.register_buffer("bias", bias)  # [out]

    @classmethod
    def from_float(cls, linear: nn.Linear, smoothing: torch.Tensor | None) -> Int8Linear:
        weight = linear.weight.detach().float()
        smoothing = torch.ones(weight.shape[1]) if smoothing is None else smoothing.float()
        weight = weight * smoothing[None, :]
        scale = weight.abs().amax(1).clamp(min=1e-8) / 127
        quantized = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        bias = linear.bias.detach().float() if linear.bias is not None else torch.zeros(weight.shape[0])
        return cls((1.0 / smoothing).contiguous(), quantized.t().contiguous(), scale.contiguous(),
                   quantized.sum(1, dtype=torch.int32).float().contiguous(), bias.contiguous())

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> Int8Linear:
        return cls(*(state[name] for name in cls.BUFFERS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Per row: x ~ scale * (q + 128) + low, q in [-128, 127]. Then, with W ~ W_int8 * weight_scale,
        # x @ W^T = weight_scale * (scale * (q @ W_int8) + (128 * scale + low) * column_sum(W_int8)).
        rows = x.reshape(-1, x.shape[-1]) * self.inv_smoothing
        low = rows.amin(-1, keepdim=True)
        scale = ((rows.amax(-1, keepdim=True) - low) / 255).clamp(min=1e-8)
        q = (torch.round((rows - low) / scale) - 128).to(torch.int8)  # (rows - low) / scale is in [0, 255]
        accumulated = torch._int_mm(q, self.weight_int8).float()
        offset = (128 * scale + low) * self.weight_column_sum
        out = (accumulated * scale + offset) * self.weight_scale + self.bias
        return out.reshape(*x.shape[:-1], out.shape[-1])


@dataclass
class LinearInputs:
    """What calibration saw at one linear's input: per-channel max |x| and a sample of rows."""

    channel_max: torch.Tensor | None = None
    samples: list[torch.Tensor] = field(default_factory=list)

    def add(self, x: torch.Tensor, generator: torch.Generator) -> None:
        rows = x.detach().reshape(-1, x.shape[-1]).float()
        peak = rows.abs().amax(0)
        self.channel_max = peak if self.channel_max is None else torch.maximum(self.channel_max, peak)
        if sum(len(s) for s in self.samples) < SAMPLED_ROWS_MAX:
            pick = torch.randperm(rows.shape[0], generator=generator)[:SAMPLED_ROWS_PER_CALL]
            self.samples.append(rows[pick].clone())


def capture_linear_inputs(model: nn.Module, run_calibration: Callable[[], None]) -> dict[str, LinearInputs]:
    """Per nn.Linear (by name), what its input looked like over the calibration run."""
    captured: dict[str, LinearInputs] = {}
    generator = torch.Generator().manual_seed(0)  # the same rows on every load
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            captured[name] = LinearInputs()

            def record(mod: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor,
                       name: str = name) -> None:
                captured[name].add(inputs[0], generator)
            hooks.append(module.register_forward_hook(record))
    try:
        run_calibration()
    finally:
        for hook in hooks:
            hook.remove()
    return {name: seen for name, seen in captured.items() if seen.channel_max is not None}


def smoothing_scale(linear: nn.Linear, channel_max: torch.Tensor, alpha: float | None) -> torch.Tensor | None:
    if alpha is None:
        return None
    x_max = channel_max.clamp(min=1e-5)
    w_max = linear.weight.detach().abs().amax(0).float().clamp(min=1e-5)
    return x_max.pow(alpha) / w_max.pow(1 - alpha)


@torch.inference_mode()
def best_int8_linear(linear: nn.Linear, seen: LinearInputs) -> tuple[Int8Linear, float | None, float]:
    """The Int8Linear (and its alpha, relative output error) closest to `linear` on the samples."""
    x = torch.cat(seen.samples)
    reference = linear(x.to(linear.weight.dtype)).float()
    best: tuple[Int8Linear, float | None, float] | None = None
    for alpha in SMOOTHING_ALPHAS:
        candidate = Int8Linear.from_float(linear, smoothing_scale(linear, seen.channel_max, alpha))
        error = float((candidate(x) - reference).norm() / reference.norm().clamp(min=1e-12))
        if best is None or error < best[2]:
            best = (candidate, alpha, error)
    assert best is not None
    return best


def quantize_int8(model: nn.Module, captured: dict[str, LinearInputs]) -> int:
    """Replace every calibrated nn.Linear by its best Int8Linear, in place; returns how many."""
    def quantize(name: str, linear: nn.Linear) -> nn.Module | None:
        if name not in captured:
            return None
        quantized, alpha, error = best_int8_linear(linear, captured[name])
        logger.debug("int8 %s: alpha %s, relative output error %.4f", name, alpha, error)
        return quantized
    return _swap_linears(model, quantize)


def _swap_linears(model: nn.Module, make: Callable[[str, nn.Linear], nn.Module | None]) -> int:
    replaced = 0
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if isinstance(child, nn.Linear) and (new := make(name, child)) is not None:
                setattr(parent, child_name, new)
                replaced += 1
    return replaced


def save_quantized(model: nn.Module, path: Path, min_cosine_measured: float) -> None:
    """Store the int8 layers and the gate's measurement, so the next load skips calibration."""
    state = {name: {b: getattr(module, b) for b in Int8Linear.BUFFERS}
             for name, module in model.named_modules() if isinstance(module, Int8Linear)}
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"format": CACHE_FORMAT, "layers": state, "min_cosine": min_cosine_measured}, scratch)
    os.replace(scratch, path)  # atomic: a concurrent reader sees all or nothing


def load_quantized(model: nn.Module, path: Path) -> float:
    """Swap the model's linears for the stored int8 layers; returns the stored gate measurement.
    Raises (and leaves the model untouched) if the file does not match the model."""
    stored = torch.load(path, weights_only=True)
    layers = stored["layers"]
    if stored.get("format") != CACHE_FORMAT:
        raise ValueError(f"format {stored.get('format')!r}, expected {CACHE_FORMAT}")
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    if set(layers) != set(linears):
        raise ValueError("its layers do not match the model's linear layers")
    modules = {name: Int8Linear.from_state(layers[name]) for name in linears}
    for name, linear in linears.items():
        if tuple(modules[name].weight_int8.shape) != (linear.in_features, linear.out_features):
            raise ValueError(f"layer {name} has another shape than the model's")
    _swap_linears(model, lambda name, _: modules[name])
    return float(stored["min_cosine"])


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
