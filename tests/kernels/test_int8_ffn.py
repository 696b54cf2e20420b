"""Ember's int8 feed-forward kernel (ember/kernels/int8_ffn.py): the torch ops it replaces, on
every build this CPU runs; linked where the int8 model can use it; called by compiled graphs
through its C shim; and replaced by the torch ops where it cannot be built."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from ember import LLM
from ember.kernels import int8_ffn, int8_mm, library
from ember.runner.aot_package import _refuse_inlined_weights
from ember.runner.int8.kernel import INT_MM
from ember.runner.int8.linear import Int8Linear, RationalGELU
from tests.kernels import builds

SMALL = {"max_num_seqs": 8, "quantization": "int8", "int8_kernel": "int_mm", "quantization_min_cosine": 0.5}


def _pair(width: int, hidden: int, k: int) -> tuple[Int8Linear, Int8Linear]:
    """ffn_in (hidden -> width) and ffn_out (width -> hidden) as int8 linears with k outliers."""
    first, second = torch.nn.Linear(hidden, width), torch.nn.Linear(width, hidden)
    smoothing = torch.rand(width) + 0.5
    return (Int8Linear.from_float(INT_MM, first, None, torch.arange(k) * 3),
            Int8Linear.from_float(INT_MM, second, smoothing, torch.randperm(width)[:k]))


def _reference(acc, scale, low, outliers, first: Int8Linear, second: Int8Linear):
    """The torch ops the kernel replaces: first's epilogue, RationalGELU, second's quantization."""
    out = (acc.float() * scale + (128 * scale + low) * first.weight_column_sum) * first.weight_scale + first.bias
    out = out + outliers @ first.outlier_weight
    gelu = RationalGELU()(out)
    smoothed = gelu * second.inv_smoothing
    next_low = smoothed.amin(-1, keepdim=True)
    next_scale = ((smoothed.amax(-1, keepdim=True) - next_low) / 255).clamp(min=1e-8)
    steps = torch.round((smoothed - next_low) / next_scale) - 128
    return steps, next_scale, next_low, gelu[:, second.outlier_index]


@pytest.mark.parametrize("isa", builds(), ids=lambda isa: isa.name)
@pytest.mark.parametrize(("rows", "width", "k"), [(1, 1536, 4), (37, 96, 4), (3, 45, 1), (5, 37, 2), (64, 16, 0)])
def test_kernel_equals_the_torch_ops(tmp_path, isa, rows, width, k):
    """Every step within one of the torch ops' (a value on a rounding boundary), nearly all equal;
    the row ranges and outlier values within float32 rounding; widths that are not a multiple of
    the vector (the tail) or of AVX2's four-vector store (45: 32 + 8 + 5), with and without
    outlier channels."""
    torch.manual_seed(0)
    kernel = int8_ffn.load_kernel(isa, str(tmp_path))
    assert kernel is not None
    first, second = _pair(width, 24, k)
    acc = torch.randint(-3000, 3000, (rows, width), dtype=torch.int32)
    scale, low = torch.rand(rows, 1) * 1e-2 + 1e-3, -torch.rand(rows, 1)
    outliers = torch.randn(rows, k) * 10
    steps, next_scale, next_low, next_outliers = kernel.run(
        acc, scale, low, first.weight_column_sum, first.weight_scale, first.bias, outliers, first.outlier_weight,
        second.inv_smoothing, second.outlier_columns)
    ref_steps, ref_scale, ref_low, ref_outliers = _reference(acc, scale, low, outliers, first, second)
    assert steps.dtype == torch.int8 and steps.shape == (rows, width)
    step_error = (steps.int() - ref_steps.int()).abs()
    assert int(step_error.max()) <= 1 and float((step_error > 0).float().mean()) < 1e-3
    torch.testing.assert_close(next_scale, ref_scale, rtol=1e-5, atol=0)
    torch.testing.assert_close(next_low, ref_low, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(next_outliers, ref_outliers, rtol=1e-5, atol=1e-5)


def test_bad_inputs_are_refused_with_what_is_wrong(tmp_path):
    int8_ffn.prepare(str(tmp_path))
    first, second = _pair(32, 16, 4)
    acc, scale, low, outliers = torch.zeros(3, 32, dtype=torch.int32), torch.ones(3, 1), torch.zeros(3, 1), torch.zeros(3, 4)

    def call(**changes):
        args = {"acc": acc, "row_scale": scale, "row_low": low, "column_sum": first.weight_column_sum,
                "weight_scale": first.weight_scale, "bias": first.bias, "outliers": outliers,
                "outlier_weight": first.outlier_weight, "next_inv_smoothing": second.inv_smoothing,
                "next_outlier_columns": second.outlier_columns, **changes}
        return torch.ops.ember.int8_gelu_requantize(*args.values())
    with pytest.raises(ValueError, match="acc must be int32"):
        call(acc=acc.float())
    with pytest.raises(ValueError, match="bias must be float32 \\[32\\]"):
        call(bias=first.bias[:8])
    with pytest.raises(ValueError, match="next_outlier_columns must be int64 \\[1, k\\]"):
        call(next_outlier_columns=second.outlier_index)
    with pytest.raises(ValueError, match="next_outlier_columns must lie in \\[0, 32\\)"):
        call(next_outlier_columns=torch.tensor([[0, 1, 2, 32]]))
    with pytest.raises(ValueError, match="row_scale, row_low must be \\[3, 1\\]"):
        call(row_scale=torch.ones(2, 1))


def _linked(llm: LLM) -> int:
    return sum(getattr(m, "gelu_into", None) is not None for m in llm.engine.runner.model.modules())


def test_feed_forward_blocks_are_linked_where_the_kernel_applies(tiny_bert, tmp_path):
    """int_mm with every linear in int8: each layer's ffn_in hands ffn_out its input quantized;
    the stricter rung (ffn_out in float32) and the onednn kernel (likewise) are not linked."""
    layers = json.loads((tiny_bert / "config.json").read_text())["num_hidden_layers"]
    eager = LLM(str(tiny_bert), enforce_eager=True, compile_cache_dir="", **SMALL)
    assert _linked(eager) == layers
    model = eager.engine.runner.model
    assert model.layers[0].ffn_in.gelu_into is model.layers[0].ffn_out
    assert "gelu_into" not in "".join(model.state_dict())  # a reference, not a submodule
    onednn = LLM(str(tiny_bert), enforce_eager=True, compile_cache_dir="", **{**SMALL, "int8_kernel": "onednn"})
    assert _linked(onednn) == 0
    from ember.runner.int8.calibration import swap_int8_back

    swap_int8_back(model, lambda name: torch.nn.Linear(8, 8) if name.endswith("ffn_out") else None)
    assert _linked(eager) == 0


def test_the_compiled_graph_calls_the_kernel_and_matches_eager(tiny_bert, tmp_path):
    """The per-layer package calls the C shim directly and computes, in every layer (each with
    its own outlier channels), what the eager int8 model does."""
    texts = [("quick brown fox " * n).strip() for n in range(1, 9)]
    compiled = LLM(str(tiny_bert), compile_scope="layer", compile_cache_dir=str(tmp_path), **SMALL)
    eager = LLM(str(tiny_bert), enforce_eager=True, compile_cache_dir="", **SMALL)
    model = compiled.engine.runner.model
    columns = {tuple(layer.ffn_out.outlier_columns.flatten().tolist()) for layer in model.layers}
    assert len(columns) > 1  # what a package built from one layer must not bake in
    ours = np.stack([o.outputs.data for o in compiled.embed(texts)])
    ref = np.stack([o.outputs.data for o in eager.embed(texts)])
    assert ((ours * ref).sum(axis=1) >= 0.9999).all()
    assert compiled.stats()["compiles_after_ready"] == 0
    (package,) = tmp_path.glob("encoder-layer-*.pt2")
    with zipfile.ZipFile(package) as archive:
        wrapper = next(archive.read(n).decode() for n in archive.namelist() if n.endswith("wrapper.cpp"))
    assert "AOTI_TORCH_ERROR_CODE_CHECK(aoti_torch_cpu_int8_gelu_requantize(" in wrapper
    assert "aoti_torch_proxy_executor_call_function" not in wrapper


class _Scaled(torch.nn.Module):
    def __init__(self, shape: tuple[int, ...], value: float) -> None:
        super().__init__()
        self.register_buffer("scale", torch.full(shape, value))
        self.register_buffer("unused", torch.full((4,), value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def test_a_per_layer_weight_the_compiler_would_inline_is_refused():
    """Inductor writes short 0-d and 1-d weights into the code; a per-layer package runs with each
    layer's own, so one that differs between layers is refused (2-d ones pass, an unread one
    does not matter, nor one that is equal in every layer)."""
    def check(shape: tuple[int, ...], values: tuple[float, float]) -> None:
        layers = [_Scaled(shape, v) for v in values]
        _refuse_inlined_weights(torch.export.export(layers[0], (torch.ones(3, shape[-1]),)), layers)
    with pytest.raises(ValueError, match="would inline as literals: \\['scale'\\]"):
        check((4,), (1.0, 2.0))
    check((1, 4), (1.0, 2.0))
    check((16,), (1.0, 2.0))
    check((4,), (1.0, 1.0))


def test_a_kernel_that_cannot_be_built_leaves_the_torch_ops_in_place(tiny_bert, tmp_path):
    """The compiler fails on int8_ffn.cpp and int8_mm.cpp only: the int8 model runs the torch ops,
    with a warning for each, and serves what the kernels' model does (within int8 rounding)."""
    compiler = tmp_path / "cxx"
    compiler.write_text('#!/bin/sh\ncase "$*" in *int8_ffn.cpp*|*int8_mm.cpp*) echo "simulated failure" >&2; exit 1;; esac\n'
                        'exec g++ "$@"\n')
    compiler.chmod(0o755)
    texts = ["a short text", "another, longer text than that"]
    script = f"""
import json, numpy as np
from ember import LLM
llm = LLM({str(tiny_bert)!r}, compile_cache_dir={str(tmp_path / "cache")!r}, **{SMALL!r})
vectors = np.stack([o.outputs.data for o in llm.embed({texts!r})])
linked = sum(getattr(m, "gelu_into", None) is not None for m in llm.engine.runner.model.modules())
print(json.dumps({{"vectors": vectors.tolist(), "quantization": llm.stats()["quantization"], "linked": linked}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=False,
                            env={**os.environ, "CXX": str(compiler)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "could not build Ember's int8_ffn kernel" in result.stderr and "simulated failure" in result.stderr
    assert "could not build Ember's int8_mm kernel" in result.stderr or int8_mm.planned_build() is None
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["quantization"] == "int8" and report["linked"] > 0  # linked, but the torch ops run
    with_kernel = LLM(str(tiny_bert), compile_cache_dir=str(tmp_path / "with-kernel"), **SMALL)
    assert int8_ffn.supports() and library.vector_isa() is not None
    ref = np.stack([o.outputs.data for o in with_kernel.embed(texts)])
    assert ((np.array(report["vectors"]) * ref).sum(axis=1) >= 0.999).all()
