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
  offset times a precomputed column sum of the int8 weights;
- outliers: the MAX_OUTLIERS input channels with the highest calibration peaks are zeroed in the
  int8 path and computed in float32, added in the epilogue.
The exact GELUs, whose outputs are an Int8Linear's input, become RationalGELU (error <= 1.1e-6).

All of it is plain torch, so the int8 model is exported and AOT-compiled like the float32 one.
Per linear, `a` is picked from SMOOTHING_ALPHAS as the one with the smallest output error on
calibration inputs captured from the float32 model.

Measured on all-MiniLM-L6-v2 (BENCHMARKS.md, runs of 21:13 and 21:41 UTC): min cosine vs float32
0.9994 on the bench corpora, at 1.6-1.7x the float32 throughput. Without the float32 outlier
channels it was 0.9985-0.9988; per-tensor activation scales (fbgemm's dynamic linear, this mode's
first version) reached only 0.99: one scale per tensor spends the int8 range on its outlier tokens.

The gate: before quantizing, the float32 model embeds a built-in probe set (disjoint from the
calibration texts); after, the int8 model (compiled, unless the engine runs eagerly) embeds it
again, and if the lowest cosine is below `quantization_min_cosine` the engine refuses to start,
saying what it measured (quantization="int8"), or runs the float model ("auto").

The int8 model's structure does not depend on calibration (every linear has MAX_OUTLIERS outlier
channels), so its graph is built from a placeholder copy (int8_template) while calibration runs
(aot_package._build_beside): on 2 cores a first start of MiniLM went from 23.7 s (one after the
other) to 16.5-17 s.

The int8 layers and that measurement are stored in the compile cache (save_quantized), keyed like
the compiled packages, so a restart skips calibration and the gate's two probe passes.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ember.errors import EmberError

logger = logging.getLogger(__name__)

SMOOTHING_ALPHAS: tuple[float | None, ...] = (None, 0.5, 0.7)
"""Candidates per linear (None: no smoothing). A single alpha for all of MiniLM's linears gave a
min cosine of 0.9966 at best (0.5); the per-linear choice 0.9986 (before the float32 outlier
channels). Of (None, 0.3, 0.5, 0.7, 0.85), MiniLM's linears took 0.3 and 0.85 once each; without
them the bench corpora's min cosine stayed 0.9993 / 0.9994 and the search takes 0.8 s, not 2.1."""

SAMPLED_ROWS_PER_CALL = 128
SAMPLED_ROWS_MAX = 2048
"""Calibration inputs kept per linear to pick its alpha (2048 x 1536 floats = 12 MB at most)."""


MAX_OUTLIERS = 4
"""Input channels per linear computed in float32 beside the int8 GEMM: the 4 with the highest
calibration peaks. In all-MiniLM-L6-v2 the real outliers are the same few hidden dimensions (99,
62, 63, 223) at the inputs of qkv and ffn_in, 15x the median channel at ffn_in, and one or two
GELU outputs per ffn_out, up to 16x. Taking them out of the int8 path gives its per-token range to
the other channels and its per-channel weight scales to the other columns. Min cosine vs float32
on the bench corpora (1024 short texts / 256 passages, calibrated on other texts): 0.99854 /
0.99888 without; 0.99940 / 0.99943 with those over 3x the median (at most 4: 59 channels); 0.9993
/ 0.9994 with 4 on every linear (96 channels), which fixes the structure before calibration."""

CACHE_FORMAT = 4
"""Version of the stored int8 layers (save_quantized); bump when Int8Linear's buffers change."""


INT8_DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
"""/proc/cpuinfo flags of CPUs with int8 dot-product instructions, which make _int_mm fast."""


def resolve_quantization(requested: str | None, dtype: str, enforce_eager: bool, flags: set[str],
                         model_allows: bool = True) -> str | None:
    """What quantization="auto" (the default) means: int8 when the CPU has int8 dot products, the
    dtype is left to Ember ("auto"), the model is compiled (eager int8 runs many small ops and is
    no faster) and its class allows it (`int8_by_default`); else none. Any other value is taken as
    given."""
    if requested != "auto":
        return requested
    if dtype != "auto" or enforce_eager or not model_allows:
        return None
    return "int8" if any(flag in flags for flag in INT8_DOT_PRODUCT_FLAGS) else None


class QuantizationQualityError(EmberError):
    """The int8 model's outputs are too far from the fp32 model's on the probe set."""


class Int8Linear(nn.Module):
    """A linear layer with int8 weights, run on per-token asymmetric int8 activations, except for
    a few outlier input channels that stay in float32."""

    BUFFERS = ("inv_smoothing", "weight_int8", "weight_scale", "weight_column_sum", "bias",
               "outlier_index", "outlier_weight")

    def __init__(self, inv_smoothing: torch.Tensor, weight_int8: torch.Tensor, weight_scale: torch.Tensor,
                 weight_column_sum: torch.Tensor, bias: torch.Tensor, outlier_index: torch.Tensor,
                 outlier_weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("inv_smoothing", inv_smoothing)  # [in], 0 at the outlier channels
        self.register_buffer("weight_int8", weight_int8)  # [in, out], as _int_mm wants
        self.register_buffer("weight_scale", weight_scale)  # [out]
        self.register_buffer("weight_column_sum", weight_column_sum)  # [out], float32 (exact)
        self.register_buffer("bias", bias)  # [out]
        self.register_buffer("outlier_index", outlier_index)  # [k], int64; k may be 0
        self.register_buffer("outlier_weight", outlier_weight)  # [k, out], float32
        # Row j is one-hot at outlier_index[j]: the forward reads the outliers with sums over the row,
        # which fuse into the pass that finds the row's range. A gather (index_select or a slice)
        # made inductor's epilogue 1.6-1.8x slower on a 384 -> 1536 linear; these sums cost 5-9%.
        selector = torch.zeros(len(outlier_index), inv_smoothing.shape[0])
        selector[torch.arange(len(outlier_index)), outlier_index] = 1.0
        self.register_buffer("outlier_selector", selector, persistent=False)

    @classmethod
    def from_float(cls, linear: nn.Linear, smoothing: torch.Tensor | None,
                   outliers: torch.Tensor | None = None) -> Int8Linear:
        weight = linear.weight.detach().float()
        outliers = torch.zeros(0, dtype=torch.int64) if outliers is None else outliers.to(torch.int64)
        outlier_weight = weight[:, outliers].t().contiguous()
        smoothing = torch.ones(weight.shape[1]) if smoothing is None else smoothing.float()
        inv_smoothing = 1.0 / smoothing
        inv_smoothing[outliers] = 0.0  # the int8 path sees zeros there: their range is not its
        weight = weight * smoothing[None, :]
        weight[:, outliers] = 0.0
        scale = weight.abs().amax(1).clamp(min=1e-8) / 127
        quantized = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        bias = linear.bias.detach().float() if linear.bias is not None else torch.zeros(weight.shape[0])
        return cls(inv_smoothing.contiguous(), quantized.t().contiguous(), scale.contiguous(),
                   quantized.sum(1, dtype=torch.int32).float().contiguous(), bias.contiguous(),
                   outliers.contiguous(), outlier_weight)

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> Int8Linear:
        return cls(*(state[name] for name in cls.BUFFERS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Per row: x ~ scale * (q + 128) + low, q in [-128, 127]. Then, with W ~ W_int8 * weight_scale,
        # x @ W^T = weight_scale * (scale * (q @ W_int8) + (128 * scale + low) * column_sum(W_int8)).
        rows = x.reshape(-1, x.shape[-1])
        smoothed = rows * self.inv_smoothing
        low = smoothed.amin(-1, keepdim=True)
        scale = ((smoothed.amax(-1, keepdim=True) - low) / 255).clamp(min=1e-8)
        q = (torch.round((smoothed - low) / scale) - 128).to(torch.int8)  # (smoothed - low) / scale is in [0, 255]
        accumulated = torch._int_mm(q, self.weight_int8).float()
        offset = (128 * scale + low) * self.weight_column_sum
        out = (accumulated * scale + offset) * self.weight_scale + self.bias
        for j in range(self.outlier_selector.shape[0]):  # fixed per layer: unrolled by the export
            out = out + (rows * self.outlier_selector[j]).sum(-1, keepdim=True) * self.outlier_weight[j]
        return out.reshape(*x.shape[:-1], out.shape[-1])


class RationalGELU(nn.Module):
    """GELU(x) = x/2 (1 + erf(x / sqrt 2)), with erf from a rational function: u = clamp(x / (4 sqrt 2),
    -1, 1), erf ~ u P(u^2) / Q(u^2), P and Q of degree 5, fitted towards minimax on [0, 1] (Loeb's
    linearized least squares, reweighted). Error against torch's exact GELU (tests/runner): at
    most 1.1e-6 for |x| <= 8, and at most 1e-12 |x| beyond (P(1) / Q(1) = 1 to float32 precision).

    The int8 model uses it where an exact GELU feeds an Int8Linear. It is plain multiply-adds and
    one division, which inductor fuses and vectorizes; torch's erf costs ~1 ms per 1.45 M values
    on 2 cores, and MiniLM's ffn_out input kernel computes it twice (once for the row's range, once
    to quantize). Per MiniLM int8 layer (4 x 256 / 64 x 16 tokens): exact 11.3 / 7.9 ms, this
    10.7 / 7.4 ms. A polynomial of degree 8 (error 5.5e-5) was 1-4% faster still, but moved the
    worst of the bench's 512 short texts from 0.99941 to 0.99916 cosine against
    sentence-transformers; this one 0.99934 (BENCHMARKS.md)."""

    NUMERATOR = (4.5135159155, 12.558530117, 54.747072419, 65.576324102, 75.490634483, 8.2817007375)
    DENOMINATOR = (1.0, 8.1157257896, 29.815487258, 63.251155192, 79.691158462, 39.294249807)
    INPUT_SCALE = 0.7071067811865476 / 4.0  # u = x / sqrt(2) / 4, clamped to [-1, 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = (x * self.INPUT_SCALE).clamp(-1.0, 1.0)
        t = u * u
        return x * 0.5 * (1.0 + u * _horner(t, self.NUMERATOR) / _horner(t, self.DENOMINATOR))


def _horner(t: torch.Tensor, coefficients: tuple[float, ...]) -> torch.Tensor:
    """sum_k coefficients[k] t^k."""
    out = t * coefficients[-1] + coefficients[-2]
    for c in reversed(coefficients[:-2]):
        out = out * t + c
    return out


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


def calibration_and_probe_texts() -> tuple[list[str], list[str]]:
    """304 calibration texts and 80 probe texts (short sentences and passages), disjoint from each
    other and from the benchmark's corpora (its first 1024 short texts and 256 passages, whose
    sentences are the corpus's first ~3400). Calibrating on 256 short texts and 48 passages, not
    512 and 64, gave the same min cosine on the bench corpora (0.9993 / 0.9994) in 2.7 s, not 4.4."""
    from ember.bench import corpus

    short, passages = corpus.load("short", 4672), corpus.load("passages", 592)
    return short[4096:4352] + passages[512:560], short[4608:] + passages[576:]


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
    """The Int8Linear (and its alpha, relative output error) closest to `linear` on the samples,
    with outliers_per_linear() outlier channels: those with the highest peaks."""
    x = torch.cat(seen.samples)
    reference = linear(x.to(linear.weight.dtype)).float()
    best: tuple[Int8Linear, float | None, float] | None = None
    outliers = seen.channel_max.topk(outliers_per_linear(linear)).indices
    for alpha in SMOOTHING_ALPHAS:
        candidate = Int8Linear.from_float(linear, smoothing_scale(linear, seen.channel_max, alpha), outliers)
        error = float((candidate(x) - reference).norm() / reference.norm().clamp(min=1e-12))
        if best is None or error < best[2]:
            best = (candidate, alpha, error)
    assert best is not None
    return best


def quantize_int8(model: nn.Module, captured: dict[str, LinearInputs]) -> int:
    """Replace every calibrated nn.Linear by its best Int8Linear, in place; returns how many.
    Every linear gets outliers_per_linear() outlier channels, so the int8 model's structure is
    known before calibration (int8_template) and its graph can be built meanwhile."""
    def quantize(name: str, linear: nn.Linear) -> nn.Module | None:
        if name not in captured:
            return None
        quantized, alpha, error = best_int8_linear(linear, captured[name])
        logger.debug("int8 %s: alpha %s, relative output error %.4f", name, alpha, error)
        return quantized
    return _swap_to_int8(model, quantize)


def outliers_per_linear(linear: nn.Linear) -> int:
    return min(MAX_OUTLIERS, linear.in_features)


def int8_template(model: nn.Module) -> nn.Module:
    """A copy of `model` with the structure quantize_int8 will give it (Int8Linears with the same
    buffers' names, shapes and dtypes; placeholder values): what the graph is built from while
    calibration runs. The package holds no weights, so the values do not matter."""
    template = copy.deepcopy(model)
    _swap_to_int8(template, lambda _, linear: Int8Linear.from_float(
        linear, None, torch.arange(outliers_per_linear(linear))))
    return template


def _swap_to_int8(model: nn.Module, make: Callable[[str, nn.Linear], nn.Module | None]) -> int:
    """Give `model` the int8 structure: each nn.Linear for which `make` returns a module is
    replaced by it, and every exact nn.GELU by RationalGELU (in the encoders Ember runs, each
    feeds a linear). Returns how many linears were replaced."""
    replaced = 0
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if isinstance(child, nn.Linear) and (new := make(name, child)) is not None:
                setattr(parent, child_name, new)
                replaced += 1
            elif isinstance(child, nn.GELU) and child.approximate == "none":
                setattr(parent, child_name, RationalGELU())
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
    _swap_to_int8(model, lambda name, _: modules[name])
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
