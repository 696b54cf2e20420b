"""Calibration: what each linear sees on built-in texts, and the Int8Linear closest to it.

Per linear, the SmoothQuant alpha is picked from SMOOTHING_ALPHAS as the one with the smallest
output error on calibration inputs captured from the float32 model, with the kernel that will
run it (its activation grid changes which alpha is best).

The texts are a frozen file shipped with this package (texts.json: 304 calibration texts, 80
probe texts for the gate, short sentences and passages of English prose, disjoint from the
benchmark corpora); its digest is part of the cache key of the stored int8 layers.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import torch
from torch import nn

from ember.runner.int8.kernel import FLOAT_HEADS, Int8Kernel
from ember.runner.int8.linear import MAX_OUTLIERS, Int8Linear, RationalGELU, link_attention_inputs, link_feed_forwards
from ember.runner.opaque_weights import placeholders

logger = logging.getLogger(__name__)

TEXTS_FILE = Path(__file__).with_name("texts.json")

SMOOTHING_ALPHAS: tuple[float | None, ...] = (None, 0.5, 0.7)
"""Candidates per linear (None: no smoothing). A single alpha for all of MiniLM's linears gave a
min cosine of 0.9966 at best (0.5); the per-linear choice 0.9986 (before the float32 outlier
channels). Of (None, 0.3, 0.5, 0.7, 0.85), MiniLM's linears took 0.3 and 0.85 once each; without
them the bench corpora's min cosine stayed 0.9993 / 0.9994 and the search takes 0.8 s, not 2.1."""

SAMPLED_ROWS_PER_CALL = 128
SAMPLED_ROWS_MAX = 2048
"""Calibration inputs kept per linear to pick its alpha (2048 x 1536 floats = 12 MB at most)."""


@cache
def calibration_and_probe_texts() -> tuple[list[str], list[str]]:
    """The frozen calibration texts and the gate's probe texts (TEXTS_FILE)."""
    texts = json.loads(TEXTS_FILE.read_text(encoding="utf-8"))
    return list(texts["calibration"]), list(texts["probe"])


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
def best_int8_linear(kernel: Int8Kernel, linear: nn.Linear, seen: LinearInputs) -> tuple[Int8Linear, float | None, float]:
    """The Int8Linear (and its alpha, relative output error) closest to `linear` on the samples,
    with outliers_per_linear() outlier channels: those with the highest peaks."""
    x = torch.cat(seen.samples)
    reference = linear(x.to(linear.weight.dtype)).float()
    best: tuple[Int8Linear, float | None, float] | None = None
    outliers = seen.channel_max.topk(outliers_per_linear(linear)).indices
    for alpha in SMOOTHING_ALPHAS:
        candidate = Int8Linear.from_float(kernel, linear, smoothing_scale(linear, seen.channel_max, alpha), outliers)
        error = float((candidate(x) - reference).norm() / reference.norm().clamp(min=1e-12))
        if best is None or error < best[2]:
            best = (candidate, alpha, error)
    assert best is not None
    return best


def quantize_int8(model: nn.Module, captured: dict[str, LinearInputs], kernel: Int8Kernel) -> int:
    """Replace every calibrated nn.Linear by its best Int8Linear, in place; returns how many.
    Every linear gets outliers_per_linear() outlier channels, so the int8 model's structure is
    known before calibration (int8_template) and its graph can be built meanwhile."""
    def quantize(name: str, linear: nn.Linear) -> nn.Module | None:
        if name not in captured or not kernel.quantizes(name):
            return None
        quantized, alpha, error = best_int8_linear(kernel, linear, captured[name])
        logger.debug("int8 %s: alpha %s, relative output error %.4f", name, alpha, error)
        return quantized
    return swap_to_int8(model, quantize)


def outliers_per_linear(linear: nn.Linear) -> int:
    return min(MAX_OUTLIERS, linear.in_features)


def int8_template(model: nn.Module, kernel: Int8Kernel) -> nn.Module:
    """A copy of `model` with the structure quantize_int8 will give it (Int8Linears with the same
    buffers' names, shapes and dtypes; placeholder values): what the graph is built from while
    calibration runs. The package holds no weights, so the values do not matter."""
    with placeholders(model):  # a copy of an opaque weight (a packed float linear's) is a placeholder
        template = copy.deepcopy(model)

    def placeholder(name: str, linear: nn.Linear) -> nn.Module | None:
        if not kernel.quantizes(name):
            return None
        module = Int8Linear.from_float(kernel, linear, None, torch.arange(outliers_per_linear(linear)))
        module.use_placeholder_weights()
        return module
    swap_to_int8(template, placeholder)
    return template


def swap_to_int8(model: nn.Module, make: Callable[[str, nn.Linear], nn.Module | None]) -> int:
    """Give `model` the int8 structure: each nn.Linear for which `make` returns a module is
    replaced by it, and every exact nn.GELU of the layers by RationalGELU (in the encoders Ember
    runs, each feeds a linear; the heads keep theirs, as they keep float32 linears), then links
    the feed-forward blocks that can run their middle in one op (link_feed_forwards) and the q/k/v
    projections that can hand their attention the accumulator (link_attention_inputs). Returns how
    many linears were replaced. Layers that declare `attention_narrow` run their attention's products
    in bf16 or int16 where the kernel has them (kernels/attention.py); the gate measures that too."""
    replaced = 0
    for parent, child_name, name, child in _children(model):
        if isinstance(child, nn.Linear) and (new := make(name, child)) is not None:
            setattr(parent, child_name, new)
            replaced += 1
        elif isinstance(child, nn.GELU) and child.approximate == "none" and not name.startswith(FLOAT_HEADS):
            setattr(parent, child_name, RationalGELU())
    link_feed_forwards(model)
    link_attention_inputs(model)
    for module in model.modules():  # layers that can run narrow attention do so in the int8 model
        if hasattr(type(module), "attention_narrow"):
            module.attention_narrow = True
    return replaced


def swap_int8_back(model: nn.Module, make: Callable[[str], nn.Module | None]) -> int:
    """Replace each Int8Linear of `model` for which `make` returns a module (its float32 linear)
    by it; returns how many. The GELUs stay RationalGELU: int8_template and quantize_int8 give
    every rung that structure, whichever linears it keeps in float32; a block whose ffn_out is
    float32 again is unlinked."""
    replaced = 0
    for parent, child_name, name, child in _children(model):
        if isinstance(child, Int8Linear) and (new := make(name)) is not None:
            setattr(parent, child_name, new)
            replaced += 1
    link_feed_forwards(model)
    link_attention_inputs(model)
    return replaced


def _children(model: nn.Module) -> list[tuple[nn.Module, str, str, nn.Module]]:
    """Every (parent, child's attribute name, child's module path, child) of `model`, listed
    before any is replaced."""
    return [(parent, child_name, f"{parent_name}.{child_name}" if parent_name else child_name, child)
            for parent_name, parent in model.named_modules() for child_name, child in parent.named_children()]
