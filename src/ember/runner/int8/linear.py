"""Int8Linear, the int8 model's linear layer, and RationalGELU, the GELU that feeds it.

Per linear, y = x W^T + b becomes (Int8Linear.forward):
- smoothing (SmoothQuant, Xiao et al. 2022): x is divided per input channel by
  s_j = max|X_j|^a / max|W_j|^(1-a) and W's column j multiplied by it, which moves the range of
  a few outlier channels from the activations into the weights;
- weights: int8, one scale per output channel, quantized once at load;
- activations: per token (row), asymmetric: the row's [min, max] is mapped onto the kernel's
  grid (256 steps for int_mm, 128 for onednn: kernel.py), so that a row of GELU outputs (all
  >= -0.17) uses the whole range; computed inside the compiled graph, fused with whatever
  produced x;
- the accumulator is scaled back to float32 with the row and channel scales, plus the row's
  offset times a precomputed column sum of the int8 weights;
- outliers: the MAX_OUTLIERS input channels with the highest calibration peaks are zeroed in the
  int8 path and computed in float32, added in the epilogue.

All of it is plain torch plus the kernel's one op, so the int8 model is exported and AOT-compiled
like the float32 one.

A feed-forward block whose layer declares FEED_FORWARD (ffn_out(GELU(ffn_in(x)))) with both linears
on int_mm is linked (link_feed_forwards): where Ember's int8_ffn kernel runs, ffn_in hands ffn_out
its input already quantized (QuantizedRows), dequantized, through the GELU and requantized in one
op (kernels/int8_ffn.py), and the GELU module passes it on. Likewise a layer's fused q/k/v
projection (a layer that declares ATTENTION_INPUT) on int_mm is linked to its attention
(link_attention_inputs): where Ember's attention kernel runs, it hands the attention its int32
accumulator with the row and column terms of its epilogue (QkvAccumulator), which the kernel
applies as it packs q, k and v, so the float32 projection is never written.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ember.kernels import attention as attention_kernel
from ember.kernels import int8_ffn, int8_mm
from ember.runner.int8.kernel import Int8Kernel

MAX_OUTLIERS = 4
"""Input channels per linear computed in float32 beside the int8 GEMM: the 4 with the highest
calibration peaks. In all-MiniLM-L6-v2 the real outliers are the same few hidden dimensions (99,
62, 63, 223) at the inputs of qkv and ffn_in, 15x the median channel at ffn_in, and one or two
GELU outputs per ffn_out, up to 16x. Taking them out of the int8 path gives its per-token range to
the other channels and its per-channel weight scales to the other columns. Min cosine vs float32
on the bench corpora (int_mm, calibrated on other texts): 0.99854 / 0.99888 without; 0.9993 /
0.9994 with 4 on every linear, which fixes the structure before calibration."""


class QuantizedRows(NamedTuple):
    """A linear's input already on its int8 grid: int8_gelu_requantize's outputs, and the input's
    leading dimensions."""

    steps: torch.Tensor
    """int8 [rows, in]: the step on the row's grid minus 128 (int_mm's operand)."""
    scale: torch.Tensor
    """[rows, 1]"""
    low: torch.Tensor
    """[rows, 1]"""
    outliers: torch.Tensor
    """[rows, k]: the input at the linear's outlier channels."""
    leading: tuple[int, ...]


class Int8Linear(nn.Module):
    """A linear layer with int8 weights, run on per-token asymmetric int8 activations, except for
    a few outlier input channels that stay in float32."""

    BUFFERS = ("inv_smoothing", "weight_int8", "weight_scale", "weight_column_sum", "bias",
               "outlier_index", "outlier_weight")

    def __init__(self, kernel: Int8Kernel, inv_smoothing: torch.Tensor, weight_int8: torch.Tensor,
                 weight_scale: torch.Tensor, weight_column_sum: torch.Tensor, bias: torch.Tensor,
                 outlier_index: torch.Tensor, outlier_weight: torch.Tensor) -> None:
        super().__init__()
        self.kernel = kernel
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
        # What int8_gelu_requantize reads: 2-d, because inductor inlines 1-d tensors of at most 8
        # values as literals, and a package runs with other layers' (and a template's) buffers.
        self.register_buffer("outlier_columns", outlier_index.reshape(1, -1), persistent=False)
        self.__dict__["gelu_into"] = None  # set by link_feed_forwards; not a submodule (it is a sibling)
        self.attention_head_dim: int | None = None
        """Set by link_attention_inputs: the head size of the attention this linear feeds."""
        if kernel.name == "int_mm" and int8_mm.shape_supported(*weight_int8.shape):
            # What Ember's int8_mm kernel multiplies a few rows by (kernels/int8_mm.py).
            packed, compensation = int8_mm.pack(weight_int8)
            self.register_buffer("weight_vnni", packed, persistent=False)
            self.register_buffer("weight_compensation", compensation, persistent=False)
        if kernel.name == "onednn":  # what the graph multiplies by; weight_int8 stays for the cache
            self.register_buffer("weight_packed", kernel.pack(weight_int8), persistent=False)
            self.register_buffer("weight_zero_point", torch.zeros(weight_scale.shape[0], dtype=torch.int32),
                                 persistent=False)

    def opaque_placeholders(self) -> dict[str, torch.Tensor]:
        """What stands in for the onednn kernel's prepacked weight, an opaque tensor that torch.export
        cannot trace, in a graph's build (runner/opaque_weights.py): a plain int8 tensor of its shape
        (the package holds no weights; the loaded model's packed weight is handed to it)."""
        packed = getattr(self, "weight_packed", None)
        return {"weight_packed": torch.zeros_like(self.weight_int8)} if packed is not None and packed.is_mkldnn else {}

    def use_placeholder_weights(self) -> None:
        """Make the module exportable without its values, for good (a template's)."""
        for name, placeholder in self.opaque_placeholders().items():
            setattr(self, name, placeholder)

    @classmethod
    def from_float(cls, kernel: Int8Kernel, linear: nn.Linear, smoothing: torch.Tensor | None,
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
        return cls(kernel, inv_smoothing.contiguous(), quantized.t().contiguous(), scale.contiguous(),
                   quantized.sum(1, dtype=torch.int32).float().contiguous(), bias.contiguous(),
                   outliers.contiguous(), outlier_weight)

    @classmethod
    def from_state(cls, kernel: Int8Kernel, state: dict[str, torch.Tensor]) -> Int8Linear:
        return cls(kernel, *(state[name] for name in cls.BUFFERS))

    def forward(self, x: torch.Tensor | QuantizedRows
                ) -> torch.Tensor | QuantizedRows | attention_kernel.QkvAccumulator:
        if isinstance(x, QuantizedRows):
            return self._from_quantized(x)
        rows = x.reshape(-1, x.shape[-1])
        smoothed = rows * self.inv_smoothing
        low = smoothed.amin(-1, keepdim=True)
        scale = ((smoothed.amax(-1, keepdim=True) - low) / self.kernel.activation_levels).clamp(min=1e-8)
        steps = torch.round((smoothed - low) / scale)  # [rows, in], in [0, activation_levels]
        # Row j is one-hot: the outlier channels' values, read in the pass that finds the row's range.
        outliers = [(rows * self.outlier_selector[j]).sum(-1, keepdim=True) for j in range(self.outlier_selector.shape[0])]
        if self.kernel.name == "int_mm":
            # x ~ scale * (q + 128) + low, q in [-128, 127]. With W ~ W_int8 * weight_scale,
            # x @ W^T = weight_scale * (scale * (q @ W_int8) + (128 * scale + low) * column_sum(W_int8)).
            accumulated = self._int_mm((steps - 128).to(torch.int8))
            if self.gelu_into is not None and int8_ffn.supports():
                return self._gelu_requantize(accumulated, scale, low, outliers, tuple(x.shape[:-1]))
            if self.attention_head_dim is not None and attention_kernel.supports(self.attention_head_dim, torch.float32):
                terms = torch.cat([scale, 128 * scale + low, *outliers, torch.ones_like(scale)], -1)
                return attention_kernel.QkvAccumulator(accumulated.view(*x.shape[:-1], -1),
                                                       terms.view(*x.shape[:-1], -1), self.epilogue_columns)
            offset = (128 * scale + low) * self.weight_column_sum
            out = (accumulated.float() * scale + offset) * self.weight_scale + self.bias
        else:
            # x ~ scale * q + low, q in [0, 127]; the kernel applies weight_scale per channel.
            scaled = torch.ops.onednn.qlinear_pointwise(
                steps.to(torch.uint8), 1.0, 0, self.weight_packed, self.weight_scale, self.weight_zero_point,
                None, 1.0, 0, torch.float32, "none", [], "")
            out = scaled * scale + low * (self.weight_column_sum * self.weight_scale) + self.bias
        for j, value in enumerate(outliers):  # fixed per layer: unrolled by the export
            out = out + value * self.outlier_weight[j]
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def _int_mm(self, q: torch.Tensor) -> torch.Tensor:
        """q [rows, in] int8 @ weight_int8, int32: in Ember's kernel where it runs (the same result)."""
        if hasattr(self, "weight_vnni") and int8_mm.supports():
            return torch.ops.ember.int8_mm(q, self.weight_int8, self.weight_vnni, self.weight_compensation)
        return torch._int_mm(q, self.weight_int8)

    def _gelu_requantize(self, accumulated: torch.Tensor, scale: torch.Tensor, low: torch.Tensor,
                         outliers: list[torch.Tensor], leading: tuple[int, ...]) -> QuantizedRows:
        """This linear's output through the GELU, on gelu_into's int8 grid (kernels/int8_ffn.py)."""
        into = self.gelu_into
        values = torch.cat(outliers, -1) if outliers else scale.new_zeros(scale.shape[0], 0)
        steps, next_scale, next_low, next_outliers = torch.ops.ember.int8_gelu_requantize(
            accumulated, scale, low, self.weight_column_sum, self.weight_scale, self.bias, values, self.outlier_weight,
            into.inv_smoothing, into.outlier_columns)
        return QuantizedRows(steps, next_scale, next_low, next_outliers, leading)

    def _from_quantized(self, x: QuantizedRows) -> torch.Tensor:
        """The int_mm path on an input that arrives quantized for this linear."""
        accumulated = self._int_mm(x.steps).float()
        out = (accumulated * x.scale + (128 * x.scale + x.low) * self.weight_column_sum) * self.weight_scale + self.bias
        for j in range(self.outlier_weight.shape[0]):
            out = out + x.outliers[:, j:j + 1] * self.outlier_weight[j]
        return out.reshape(*x.leading, out.shape[-1])


def link_feed_forwards(model: nn.Module) -> int:
    """Link every feed-forward block of `model` that can run its middle in one op: a layer that
    declares FEED_FORWARD, with both linears Int8Linears on int_mm and the activation RationalGELU;
    unlink the others (a rung that moved ffn_out back to float32). Returns how many are linked."""
    linked = 0
    for module in model.modules():
        names = getattr(type(module), "FEED_FORWARD", None)
        if names is None:
            continue
        first, act, second = (getattr(module, name, None) for name in names)
        if not isinstance(first, Int8Linear):
            continue
        fusable = (isinstance(act, RationalGELU) and isinstance(second, Int8Linear)
                   and first.kernel.name == second.kernel.name == "int_mm"
                   and second.kernel.activation_levels == int8_ffn.LEVELS)
        first.__dict__["gelu_into"] = second if fusable else None
        linked += fusable
    return linked


def link_attention_inputs(model: nn.Module) -> int:
    """Link every fused q/k/v projection of `model` (a layer's ATTENTION_INPUT, with its num_heads)
    that is an Int8Linear on int_mm to its attention: its forward then returns QkvAccumulator
    where the attention kernel takes the head size. Unlinks the others; returns how many are
    linked. The epilogue's column terms (QkvAccumulator) become a buffer of the linear."""
    linked = 0
    for module in model.modules():
        name = getattr(type(module), "ATTENTION_INPUT", None)
        linear = getattr(module, name, None) if name is not None else None
        if not isinstance(linear, Int8Linear):
            continue
        fusable = linear.kernel.name == "int_mm"
        linear.attention_head_dim = linear.weight_int8.shape[1] // (3 * module.num_heads) if fusable else None
        if fusable:
            # x = acc * t0 * u0 + t1 * u1 + ...: t = (scale, offset, outliers..., 1) per row (forward).
            columns = [linear.weight_scale, linear.weight_column_sum * linear.weight_scale, *linear.outlier_weight,
                       linear.bias]
            linear.register_buffer("epilogue_columns", torch.stack(columns).contiguous(), persistent=False)
        linked += fusable
    return linked


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

    def forward(self, x: torch.Tensor | QuantizedRows) -> torch.Tensor | QuantizedRows:
        if isinstance(x, QuantizedRows):  # the linear before ran it (link_feed_forwards)
            return x
        u = (x * self.INPUT_SCALE).clamp(-1.0, 1.0)
        t = u * u
        return x * 0.5 * (1.0 + u * _horner(t, self.NUMERATOR) / _horner(t, self.DENOMINATOR))


def _horner(t: torch.Tensor, coefficients: tuple[float, ...]) -> torch.Tensor:
    """sum_k coefficients[k] t^k."""
    out = t * coefficients[-1] + coefficients[-2]
    for c in reversed(coefficients[:-2]):
        out = out * t + c
    return out
