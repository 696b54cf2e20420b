"""PackedLinear: float32 linears on oneDNN with the weight packed once, compiled like any linear."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from ember import LLM
from ember.errors import InvalidRequestError
from ember.kernels.library import cpu_flags
from ember.model.loader import ModelFolder, build_model
from ember.runner import packed_linear
from ember.runner.aot_package import load_or_compile
from ember.runner.compile import ShapePlan
from ember.runner.opaque_weights import placeholders
from ember.runner.packed_linear import PackedLinear, pack_linears

pytestmark = pytest.mark.skipif(not packed_linear.available(), reason="this torch has no oneDNN")

PLAN = ShapePlan(max_batch=4, max_seq=32, max_tokens=128)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("leading", [(1,), (17,), (300,), (3, 11)])
def test_a_packed_linear_computes_what_nn_linear_does(bias, leading):
    generator = torch.Generator().manual_seed(0)
    linear = nn.Linear(96, 160, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(160, 96, generator=generator))
        if bias:
            linear.bias.copy_(torch.randn(160, generator=generator))
    packed = PackedLinear(linear)
    assert packed.weight is linear.weight and packed.weight_packed.is_mkldnn
    x = torch.randn(*leading, 96, generator=generator)
    with torch.inference_mode():
        torch.testing.assert_close(packed(x), linear(x), atol=1e-4, rtol=1e-5)
    assert "weight_packed" not in packed.state_dict()  # the stored model is the plain one


def test_pack_linears_replaces_the_float32_linears_but_the_skipped_ones(tiny_bert):
    model = build_model(ModelFolder.read(tiny_bert), torch.float32)
    linears = [name for name, m in model.named_modules() if type(m) is nn.Linear]
    replaced = pack_linears(model, skip=lambda path: path == linears[-1])
    assert replaced == len(linears) - 1
    assert type(model.get_submodule(linears[-1])) is nn.Linear
    assert all(isinstance(model.get_submodule(name), PackedLinear) for name in linears[:-1])
    if packed_linear.choose("auto", cpu_flags(), torch.bfloat16) == "onednn":  # a CPU with oneDNN's bf16 path
        bf16 = build_model(ModelFolder.read(tiny_bert), torch.bfloat16)
        assert pack_linears(bf16) == len(linears)
    half = build_model(ModelFolder.read(tiny_bert), torch.float16)
    assert pack_linears(half) == 0  # float32 and bfloat16 only


def test_placeholders_make_a_packed_model_copyable_and_come_back(tiny_bert):
    model = build_model(ModelFolder.read(tiny_bert), torch.float32)
    pack_linears(model)
    with pytest.raises(RuntimeError):
        copy.deepcopy(model)  # an opaque tensor has no storage to copy
    first = next(m for m in model.modules() if isinstance(m, PackedLinear))
    packed = first.weight_packed
    with placeholders(model):
        assert not first.weight_packed.is_mkldnn and first.weight_packed.shape == packed.shape
        template = copy.deepcopy(model)
    assert first.weight_packed is packed
    assert not any(m.weight_packed.is_mkldnn for m in template.modules() if isinstance(m, PackedLinear))


@pytest.mark.parametrize("per_layer", [False, True])
@torch.inference_mode()
def test_a_package_built_from_a_packed_model_runs_on_the_packed_weights_it_is_handed(tiny_bert, tmp_path,
                                                                                      per_layer):
    """The graph is built with placeholders in place of the packed weights; loaded, it computes with
    the packed weights of the model it is loaded with (here a second model with other weights)."""
    folder = ModelFolder.read(tiny_bert)
    reference = build_model(folder, torch.float32)
    model = build_model(folder, torch.float32)
    pack_linears(model)
    built = load_or_compile(model, PLAN, tmp_path, "key", pad_id=0, per_layer=per_layer)
    ids = torch.tensor([[2, 10, 11, 12, 13, 3], [2, 14, 15, 3, 0, 0]])
    mask = (ids != 0).long()
    torch.testing.assert_close(built.run(ids, mask), reference(ids, mask), atol=1e-5, rtol=1e-4)

    other = build_model(folder, torch.float32)
    generator = torch.Generator().manual_seed(1)
    for param in other.parameters():
        param.mul_(1 + 0.5 * torch.rand(param.shape, generator=generator))
    other_reference = copy.deepcopy(other)
    pack_linears(other)
    loaded = load_or_compile(other, PLAN, tmp_path, "key", pad_id=0, per_layer=per_layer)
    assert loaded.from_cache
    torch.testing.assert_close(loaded.run(ids, mask), other_reference(ids, mask), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("dtype", "tolerance"), [("float32", 1e-5), ("bfloat16", 2e-2)])
def test_the_engine_serves_the_same_vectors_on_either_linear_kernel(tiny_bert, tmp_path, dtype, tolerance):
    texts = ["a short one", "and a longer text " * 6, "x"]
    vectors = []
    if dtype == "bfloat16" and packed_linear.choose("auto", cpu_flags(), torch.bfloat16) == "aten":
        # No bf16 path in oneDNN here (an AVX2-only CPU): asked for, it is refused by name; auto is torch's.
        with pytest.raises(InvalidRequestError, match="linear_kernel='onednn' with dtype='bfloat16'"):
            LLM(str(tiny_bert), quantization=None, dtype=dtype, linear_kernel="onednn", compile_cache_dir=str(tmp_path))
        assert LLM(str(tiny_bert), quantization=None, dtype=dtype, enforce_eager=True,
                   compile_cache_dir=str(tmp_path)).stats()["linear_kernel"] == "aten"
        return
    for kernel in ("onednn", "aten"):
        llm = LLM(str(tiny_bert), quantization=None, dtype=dtype, linear_kernel=kernel, max_num_seqs=4,
                  compile_cache_dir=str(tmp_path))
        stats = llm.stats()
        assert (stats["linear_kernel"], stats["dtype"], stats["compiles_after_ready"]) == (kernel, dtype, 0)
        vectors.append(np.stack([o.outputs.data for o in llm.embed(texts)]))
        assert any(isinstance(m, PackedLinear) for m in llm.engine.runner.model.modules()) == (kernel == "onednn")
    np.testing.assert_allclose(vectors[0], vectors[1], atol=tolerance, rtol=tolerance)
    assert len(list(tmp_path.rglob("encoder-*.pt2"))) == 2  # the kernel is part of the package's key


def test_auto_takes_onednn_on_x86_with_avx2_and_a_bad_name_is_refused():
    assert packed_linear.choose("auto", {"avx2", "fma"}) == "onednn"
    assert packed_linear.choose("auto", {"asimd"}) == "aten"
    assert packed_linear.choose("aten", {"avx2"}) == "aten"
    # bfloat16: oneDNN only where it has a bf16 path; explicitly asked for elsewhere, refused by name.
    assert packed_linear.choose("auto", {"avx2"}, torch.bfloat16) == "aten"
    assert packed_linear.choose("auto", {"avx2", "avx512bw", "avx512vl", "avx512dq"}, torch.bfloat16) == "onednn"
    assert packed_linear.choose("auto", {"avx2", "avx_ne_convert"}, torch.bfloat16) == "onednn"
    assert packed_linear.choose("auto", {"avx2"}, torch.float32) == "onednn"
    with pytest.raises(InvalidRequestError, match="linear_kernel"):
        packed_linear.choose("onednn", {"avx2"}, torch.bfloat16)
    with pytest.raises(InvalidRequestError, match="linear_kernel"):
        LLM("unused", linear_kernel="mkl")


@pytest.mark.parametrize(("kernel", "float_linears"), [("onednn", {"ffn_out"}), ("int_mm", set())])
def test_an_int8_model_packs_only_the_linears_that_stay_float(tiny_bert, kernel, float_linears):
    """The linears the int8 kernel quantizes are not packed first (the packing would be thrown
    away at every start); those it keeps in float32 are."""
    llm = LLM(str(tiny_bert), quantization="int8", quantization_min_cosine=0.5, enforce_eager=True,
              int8_kernel=kernel, compile_cache_dir="", max_num_seqs=4)
    model = llm.engine.runner.model
    packed = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, PackedLinear)}
    assert packed == float_linears
    assert llm.embed(["a short text"])[0].outputs.data.shape == (model.config.hidden_size,)
