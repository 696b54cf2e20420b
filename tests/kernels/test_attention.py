"""Ember's attention kernel (ember/kernels): equal to SDPA on every build this CPU runs, called by
compiled graphs through its C shim, and replaced by SDPA where it cannot be built."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ember import LLM
from ember.kernels import attention, library
from tests.conftest import check_close, transformers_pooled
from tests.kernels import attention_isa, builds, int16_attention_builds
from tests.texts import varied_texts
from tests.tiny_models import build_tiny_bert


def _sdpa(qkv: torch.Tensor, key_mask: torch.Tensor, heads: int) -> torch.Tensor:
    batch, seq, width = qkv.shape
    q, k, v = qkv.view(batch, seq, 3, heads, width // (3 * heads)).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
    return out.transpose(1, 2).reshape(batch, seq, width // 3)


def test_this_cpu_gets_the_kernel_of_its_widest_isa(tmp_path):
    """An x86 CPU with AVX2 (every machine this project runs on) builds the kernel at first use."""
    isa = attention_isa()
    assert isa is not None, f"torch reports CPU capability {torch.backends.cpu.get_cpu_capability()}"
    assert attention.prepare(str(tmp_path)) == f"ember-{isa.name}"
    assert attention.supports(32, torch.float32) and not attention.supports(32, torch.bfloat16)
    assert not attention.supports(8, torch.float32)  # below two vectors: SDPA
    assert attention.supports(32, torch.float32, narrow=True) == (
        isa in (library.AVX512_BF16, library.AVX512_VNNI, library.AVX2))


@pytest.mark.parametrize("isa", builds(), ids=lambda isa: isa.name)
@pytest.mark.parametrize(("batch", "seq", "heads", "head_dim"),
                         [(1, 1, 12, 32), (3, 37, 12, 32), (2, 300, 4, 64), (6, 16, 2, 32), (1, 129, 3, 128)])
def test_kernel_equals_sdpa(tmp_path, isa, batch, seq, heads, head_dim):
    kernel = attention.load_kernel(isa, str(tmp_path))
    assert kernel is not None and kernel.width == isa.width
    gen = torch.Generator().manual_seed(batch * seq + head_dim)
    qkv = torch.randn(batch, seq, 3 * heads * head_dim, generator=gen) * 2
    lengths = [max(1, seq - 7 * b) for b in range(batch)]
    key_mask = torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]
    if seq > 5:
        key_mask[0, 2] = False  # a dropped key inside a row, not only padding at its end
    ours, sdpa = kernel.run(qkv, key_mask, heads), _sdpa(qkv, key_mask, heads)
    exact = _sdpa(qkv.double(), key_mask, heads)
    for b, length in enumerate(lengths):
        # As close to the float64 result as SDPA's float32 is (both ~1e-5 here: scores up to ~40).
        error = (ours[b, :length].double() - exact[b, :length]).abs().max().item()
        sdpa_error = (sdpa[b, :length].double() - exact[b, :length]).abs().max().item()
        assert error <= 2 * sdpa_error + 1e-6, f"row {b}: {error:.2e} from float64, SDPA {sdpa_error:.2e}"
        assert not ours[b, length:].any(), "rows past the last kept key are zeros"


@pytest.mark.skipif(attention_isa() != library.AVX512_BF16, reason="the bf16 variant needs AVX512-BF16 (the test "
                    "above checks it is not offered)")
@pytest.mark.parametrize(("batch", "seq", "heads", "head_dim"), [(1, 1, 12, 32), (3, 37, 12, 32), (2, 300, 4, 64),
                                                                 (1, 129, 3, 128)])
def test_the_bf16_variant_is_within_bf16_rounding_of_float64(tmp_path, batch, seq, heads, head_dim):
    """Odd key counts (a pair's second key is padding), dropped keys, padded rows; the error is
    bf16's (~3 digits per product), not a wrong layout (which would be of the output's size)."""
    kernel = attention.load_kernel(library.vector_isa(), str(tmp_path))
    assert kernel is not None and kernel.narrow == "bf16"
    _check_narrow_against_float64(kernel, batch, seq, heads, head_dim, relative=1e-2, largest=0.05)


def _check_narrow_against_float64(kernel: attention.Kernel, batch: int, seq: int, heads: int, head_dim: int, *,
                                  relative: float, largest: float) -> None:
    """The kernel's narrow variant on random rows (odd key counts, a dropped key, padded rows)
    within `relative` (of each row's norm) and `largest` (any value) of float64 attention, zeros
    past each row's last kept key; rows of narrow_min_keys keys or more not the float32 variant's
    result (the narrow products ran), shorter ones exactly it."""
    gen = torch.Generator().manual_seed(batch * seq + head_dim)
    qkv = torch.randn(batch, seq, 3 * heads * head_dim, generator=gen)
    lengths = [max(1, seq - 7 * b) for b in range(batch)]
    key_mask = torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]
    if seq > 5:
        key_mask[0, 2] = False
    ours, exact = kernel.run(qkv, key_mask, heads, narrow=True), _sdpa(qkv.double(), key_mask, heads)
    for b, length in enumerate(lengths):
        error = ours[b, :length].double() - exact[b, :length]
        assert error.norm() <= relative * exact[b, :length].norm() and error.abs().max() <= largest
        assert not ours[b, length:].any(), "rows past the last kept key are zeros"
        float32 = kernel.run(qkv[b:b + 1], key_mask[b:b + 1], heads)[0]
        if length >= kernel.narrow_min_keys:
            assert not torch.equal(ours[b], float32), f"the {kernel.narrow} products ran"
        else:
            assert torch.equal(ours[b], float32), f"a row of {length} keys runs float32"


def _bf16_operands_reference(qkv: torch.Tensor, key_mask: torch.Tensor, heads: int) -> torch.Tensor:
    """What the bf16 variant computes, in float64 but for its roundings: q (scaled into base-2
    scores), k, v and the softmax numerators rounded to bf16 (to nearest even), the sum of the
    numerators unrounded."""
    batch, seq, width = qkv.shape
    head_dim = width // (3 * heads)
    q, k, v = qkv.view(batch, seq, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    scale = torch.tensor(1 / head_dim ** 0.5, dtype=torch.float32) * torch.tensor(math.log2(math.e), dtype=torch.float32)
    q, k, v = ((t.float() * s).bfloat16().double() for t, s in ((q, scale), (k, 1.0), (v, 1.0)))
    scores = (q @ k.transpose(-1, -2)).masked_fill(~key_mask[:, None, None, :], -math.inf)
    numerators = torch.exp2(scores - scores.amax(-1, keepdim=True))
    out = (numerators.bfloat16().double() @ v) / numerators.sum(-1, keepdim=True)
    return out.transpose(1, 2).reshape(batch, seq, width // 3)


@pytest.mark.skipif(attention_isa() != library.AVX512_BF16, reason="the bf16 variant needs AVX512-BF16")
@pytest.mark.parametrize("spread", [1.0, 4.0])
def test_the_bf16_variants_softmax_is_exact_but_for_bf16_rounding(tmp_path, spread):
    """Given its bf16 operands, the variant's softmax (a cubic for 2^x, relative error < 8e-5, and a
    clamp at 2^-126) is as good as an exact one: far closer to the reference with the same roundings
    than bf16 rounding itself moves the output. spread 4: q and k 4x larger, scores hundreds apart in
    a row, so that many numerators take the clamp."""
    kernel = attention.load_kernel(library.vector_isa(), str(tmp_path))
    assert kernel is not None and kernel.narrow == "bf16"
    gen = torch.Generator().manual_seed(7)
    batch, seq, heads, head_dim = 3, 70, 4, 32
    qkv = torch.randn(batch, seq, 3 * heads * head_dim, generator=gen)
    qkv[..., : 2 * heads * head_dim] *= spread
    key_mask = torch.arange(seq)[None, :] < torch.tensor([seq, seq - 9, 5])[:, None]
    key_mask[0, 3] = False
    ours, reference = kernel.run(qkv, key_mask, heads, narrow=True).double(), _bf16_operands_reference(qkv, key_mask, heads)
    kept = torch.arange(seq)[None, :] <= (key_mask * torch.arange(seq)).amax(1, keepdim=True)  # up to the last kept key
    error = (ours - reference)[kept].norm() / reference[kept].norm()
    rounding = (reference - _sdpa(qkv.double(), key_mask, heads))[kept].norm() / reference[kept].norm()
    assert error < 2e-3 and error < rounding / 4, f"softmax error {error:.2e}, bf16 rounding's {rounding:.2e}"


@pytest.mark.parametrize("isa", int16_attention_builds(), ids=lambda isa: isa.name)
@pytest.mark.parametrize(("batch", "seq", "heads", "head_dim"), [(1, 1, 12, 32), (3, 101, 12, 32), (2, 300, 4, 64),
                                                                 (1, 129, 3, 128), (2, 100, 1, 256)])
def test_the_int16_variant_is_within_its_rounding_of_float64(tmp_path, isa, batch, seq, heads, head_dim):
    """The narrow products of the AVX2 build (every x86 CPU here runs it) and of the AVX512-VNNI
    one: q, k, v and the softmax numerators scaled per row to int16 grids of 2^12-2^15 levels. Odd
    key counts, dropped keys, padded rows; the error is a tenth of the bf16 variant's bound, so a
    wrong layout or scale (an error of the output's size) cannot pass, and the int16 products did
    run (rows of 96 keys or more; 101 tokens, lengths 101, 94 and 87, mixes both in one batch)."""
    kernel = attention.load_kernel(isa, str(tmp_path))
    assert kernel is not None and kernel.narrow == "int16" and kernel.narrow_min_keys == 96
    _check_narrow_against_float64(kernel, batch, seq, heads, head_dim, relative=1e-3, largest=5e-3)


@pytest.mark.parametrize("isa", int16_attention_builds(), ids=lambda isa: isa.name)
@pytest.mark.parametrize("case", ["flat", "peaked", "zeros"])
def test_the_int16_variant_keeps_its_sums_in_range(tmp_path, isa, case):
    """The cases that stress its int32 sums and scales: "flat", q = 0 over 3000 keys (every weight
    equal: P.V sums 3000 products of full-range values, the budget that p's scale keeps), "peaked",
    q and k 30x larger (scores thousands apart: most numerators clamp to ~0, one dominates), and
    "zeros", rows of v and k that are all 0 (a scale of 0). Peaked scores carry an absolute error
    that grows with them (~2^-13 of |q| |k|), which moves near-ties: a larger bound there, still
    below the bf16 variant's."""
    kernel = attention.load_kernel(isa, str(tmp_path))
    gen = torch.Generator().manual_seed(11)
    seq, heads, head_dim = (3000, 1, 32) if case == "flat" else (190, 2, 32)
    qkv = torch.randn(1, seq, 3 * heads * head_dim, generator=gen)
    hd = heads * head_dim
    if case == "flat":
        qkv[..., :hd] = 0
        qkv[..., 2 * hd:] = qkv[..., 2 * hd:].abs() + 5  # same-signed values: the largest |sum|
    elif case == "peaked":
        qkv[..., :2 * hd] *= 30
    else:
        qkv[:, ::3, hd:] = 0
    key_mask = torch.ones(1, seq, dtype=torch.bool)
    ours, exact = kernel.run(qkv, key_mask, heads, narrow=True).double(), _sdpa(qkv.double(), key_mask, heads)
    assert torch.isfinite(ours).all()
    assert (ours - exact).norm() <= (5e-3 if case == "peaked" else 1e-3) * exact.norm()


def test_kernel_reads_a_strided_projection(tmp_path):
    """q, k, v read with the projection's row strides (a view of a wider buffer), mask too."""
    kernel = attention.load_kernel(library.vector_isa(), str(tmp_path))
    wide = torch.randn(2, 20, 3 * 64 + 10)
    qkv = wide[:, :, 5:5 + 3 * 64]
    mask = torch.ones(2, 40, dtype=torch.bool)[:, ::2]
    torch.testing.assert_close(kernel.run(qkv, mask, 2), _sdpa(qkv.contiguous(), mask.contiguous(), 2),
                               atol=2e-6, rtol=1e-5)


def _accumulator(batch: int, seq: int, width: int, terms: int, seed: int) -> attention.QkvAccumulator:
    """An int8 projection's accumulator with terms of the sizes an int8 linear gives them
    (per-row scales ~1e-2, column scales ~1e-2, offsets and outliers O(1))."""
    gen = torch.Generator().manual_seed(seed)
    acc = torch.randint(-30000, 30000, (batch, seq, width), dtype=torch.int32, generator=gen)
    row_terms = torch.randn(batch, seq, terms, generator=gen)
    row_terms[..., 0] = torch.rand(batch, seq, generator=gen) * 1e-2
    column_terms = torch.randn(terms, width, generator=gen)
    column_terms[0] = torch.rand(width, generator=gen) * 1e-2
    return attention.QkvAccumulator(acc, row_terms, column_terms)


@pytest.mark.parametrize("isa", builds(), ids=lambda isa: isa.name)
@pytest.mark.parametrize(("batch", "seq", "heads", "head_dim", "terms"),
                         [(1, 1, 12, 32, 7), (3, 37, 12, 32, 7), (2, 300, 4, 64, 2), (1, 129, 3, 128, 1)])
def test_the_accumulator_variant_is_attention_of_the_dequantized_projection(tmp_path, isa, batch, seq, heads,
                                                                            head_dim, terms):
    """encoder_attention_int8 dequantizes each row as it packs it: the same result as
    encoder_attention on QkvAccumulator.dequantize() to float32 rounding (of a different order of
    the epilogue's sums), for padded rows, dropped keys and any number of terms; the bf16 variant
    likewise against the bf16 one."""
    kernel = attention.load_kernel(isa, str(tmp_path))
    x = _accumulator(batch, seq, 3 * heads * head_dim, terms, seed=batch * seq + terms)
    lengths = [max(1, seq - 7 * b) for b in range(batch)]
    key_mask = torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]
    if seq > 5:
        key_mask[0, 2] = False
    qkv = x.dequantize()
    for narrow in (False, True) if kernel.narrow else (False,):
        ours, ref = kernel.run_int8(x, key_mask, heads, narrow=narrow), kernel.run(qkv, key_mask, heads, narrow=narrow)
        # narrow: a last-bit difference in x may round a product's operand to the next bf16 or int16 step.
        torch.testing.assert_close(ours, ref, rtol=1e-2 if narrow else 1e-5, atol=1e-2 * ref.abs().max().item()
                                   if narrow else 1e-4)
        for b, length in enumerate(lengths):
            assert not ours[b, length:].any(), "rows past the last kept key are zeros"


def test_the_accumulator_ops_read_strided_accumulators_and_refuse_bad_terms(tmp_path):
    """The op takes a view of a wider accumulator (the graph's reshape of the GEMM's output);
    terms of the wrong shape or dtype are refused with what is wrong."""
    attention.prepare(str(tmp_path))
    x = _accumulator(2, 9, 3 * 64 + 16, 3, seed=1)
    acc = x.acc[:, :, 8:8 + 3 * 64]
    columns = x.column_terms[:, 8:8 + 3 * 64].contiguous()
    mask = torch.ones(2, 9, dtype=torch.bool)
    ours = torch.ops.ember.encoder_attention_int8(acc, x.row_terms, columns, mask, 2)
    ref = torch.ops.ember.encoder_attention(attention.QkvAccumulator(acc, x.row_terms, columns).dequantize(), mask, 2)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="acc must be int32"):
        torch.ops.ember.encoder_attention_int8(acc.float(), x.row_terms, columns, mask, 2)
    with pytest.raises(ValueError, match=r"column_terms float32 \[T, 192\]"):
        torch.ops.ember.encoder_attention_int8(acc, x.row_terms, columns[:2], mask, 2)
    with pytest.raises(ValueError, match="row_terms must be float32"):
        torch.ops.ember.encoder_attention_int8(acc, x.row_terms.double(), columns, mask, 2)
    many = _accumulator(2, 9, 3 * 64, attention.MAX_TERMS + 1, seed=3)
    with pytest.raises(ValueError, match=f"1 <= T <= {attention.MAX_TERMS}"):
        torch.ops.ember.encoder_attention_int8(*many, mask, 2)


def test_an_accumulator_the_kernel_cannot_take_is_dequantized_for_sdpa(tmp_path):
    """A mask other than a key mask (SDPA's [B, 1, S, S]) sends the accumulator to SDPA, on its
    float32 projection: the layer's result is attention of QkvAccumulator.dequantize()."""
    from ember.model.layers.attention import encoder_attention

    attention.prepare(str(tmp_path))
    x = _accumulator(2, 9, 3 * 64, 3, seed=2)
    mask = torch.ones(2, 1, 9, 9, dtype=torch.bool).tril()  # causal: not a key mask
    q, k, v = x.dequantize().view(2, 9, 3, 2, 32).permute(2, 0, 3, 1, 4)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(2, 9, 64)
    torch.testing.assert_close(encoder_attention(x, 2, mask), ref, rtol=1e-5, atol=1e-5)


def test_bad_inputs_are_refused_with_what_is_wrong(tmp_path):
    attention.prepare(str(tmp_path))
    qkv = torch.randn(2, 5, 3 * 64)
    with pytest.raises(ValueError, match="key_mask must be bool"):
        torch.ops.ember.encoder_attention(qkv, torch.ones(2, 5), 2)
    with pytest.raises(ValueError, match=r"key_mask must be \[batch, seq\]"):
        torch.ops.ember.encoder_attention(qkv, torch.ones(2, 6, dtype=torch.bool), 2)
    with pytest.raises(ValueError, match="qkv must be float32"):
        torch.ops.ember.encoder_attention(qkv, torch.ones(2, 5, dtype=torch.bool), 5)
    with pytest.raises(ValueError, match="head size 8"):
        torch.ops.ember.encoder_attention(torch.randn(2, 5, 3 * 16), torch.ones(2, 5, dtype=torch.bool), 2)


@pytest.fixture(scope="module")
def tiny_bert_head_32(tmp_path_factory):
    """Head size 32 (hidden 64, 2 heads): what the kernel runs on AVX2 and AVX-512 alike."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert-h32"), hidden_size=64, num_heads=2)


@pytest.mark.parametrize("enforce_eager", [True, False], ids=["eager", "compiled"])
def test_a_model_with_the_kernel_matches_transformers(tiny_bert_head_32, tmp_path, enforce_eager):
    """Mixed lengths in one batch (padding rows and keys), eager and AOT-compiled; the compiled
    package calls the kernel's C shim, not the dispatcher, and nothing compiles after ready."""
    texts = [t for t in varied_texts(40) if t.strip()]
    llm = LLM(str(tiny_bert_head_32), dtype="float32", enforce_eager=enforce_eager, compile_cache_dir=str(tmp_path))
    stats = llm.stats()
    assert stats["attention_kernel"] == f"ember-{attention_isa().name}"
    ours = np.stack([o.outputs.data for o in llm.embed(texts, truncate_prompt_tokens=-1)])
    check_close(ours=ours, ref=transformers_pooled(tiny_bert_head_32, texts, "MEAN", True), name_ours="ember",
                name_ref="transformers", tol=1e-5, label="kernel")
    assert llm.stats()["compiles_after_ready"] == 0
    if not enforce_eager:
        (package,) = tmp_path.glob("encoder-*.pt2")
        with zipfile.ZipFile(package) as archive:
            wrapper = next(archive.read(n).decode() for n in archive.namelist() if n.endswith("wrapper.cpp"))
        assert "AOTI_TORCH_ERROR_CODE_CHECK(aoti_torch_cpu_encoder_attention(" in wrapper
        assert "CHECK(aoti_torch_cpu_encoder_attention_narrow(" not in wrapper  # float32 attention for a float model
        assert "aoti_torch_proxy_executor_call_function" not in wrapper


def test_the_int8_model_runs_narrow_attention_where_the_kernel_has_it(tiny_bert_head_32, tmp_path):
    """int8 sets every layer's attention_narrow; the compiled package calls the narrow shim (where
    the build has narrow products: AVX512-BF16 or AVX2; elsewhere the float32 one), from the q/k/v projection's int32 accumulator
    where that runs on int_mm (no float32 projection in between), and serves what the eager int8
    model does."""
    int8 = {"quantization": "int8", "quantization_min_cosine": 0.5}
    texts = [t for t in varied_texts(16) if t.strip()]
    compiled = LLM(str(tiny_bert_head_32), compile_cache_dir=str(tmp_path), **int8)
    assert all(layer.attention_narrow for layer in compiled.engine.runner.model.layers)
    (package,) = tmp_path.glob("encoder-*.pt2")
    with zipfile.ZipFile(package) as archive:
        wrapper = next(archive.read(n).decode() for n in archive.namelist() if n.endswith("wrapper.cpp"))
    from_accumulator = compiled.engine.runner.model.layers[0].qkv.kernel.name == "int_mm"
    shim = "aoti_torch_cpu_encoder_attention" + ("_int8" if from_accumulator else "") + (
        "_narrow" if attention_isa() in (library.AVX512_BF16, library.AVX512_VNNI, library.AVX2) else "")
    calls = {name for name in ("encoder_attention", "encoder_attention_narrow", "encoder_attention_int8",
                               "encoder_attention_int8_narrow") if f"CHECK(aoti_torch_cpu_{name}(" in wrapper}
    assert calls == {shim.removeprefix("aoti_torch_cpu_")}
    eager = LLM(str(tiny_bert_head_32), enforce_eager=True, compile_cache_dir="", **int8)
    ours = np.stack([o.outputs.data for o in compiled.embed(texts, truncate_prompt_tokens=-1)])
    ref = np.stack([o.outputs.data for o in eager.embed(texts, truncate_prompt_tokens=-1)])
    assert ((ours * ref).sum(axis=1) >= 0.9999).all()


def test_a_kernel_that_cannot_be_built_leaves_sdpa_in_place(tiny_bert_head_32, tmp_path):
    """The compiler fails on the kernel (a wrapper around g++ that refuses attention.cpp and
    compiles everything else, so AOTInductor still builds): SDPA runs instead, with a warning,
    and the compiled model serves the same vectors."""
    compiler = tmp_path / "cxx"
    compiler.write_text('#!/bin/sh\ncase "$*" in *attention.cpp*) echo "simulated failure" >&2; exit 1;; esac\n'
                        'exec g++ "$@"\n')
    compiler.chmod(0o755)
    script = f"""
import json, numpy as np
from ember import LLM
llm = LLM({str(tiny_bert_head_32)!r}, dtype="float32", compile_cache_dir={str(tmp_path / "cache")!r})
vectors = np.stack([o.outputs.data for o in llm.embed(["a short text", "another, longer text than that"])])
print(json.dumps({{"attention": llm.stats()["attention_kernel"], "vectors": vectors.tolist()}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=False,
                            env={**os.environ, "CXX": str(compiler)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "could not build Ember's attention kernel" in result.stderr and "simulated failure" in result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["attention"] == "sdpa"
    ref = transformers_pooled(tiny_bert_head_32, ["a short text", "another, longer text than that"], "MEAN", True)
    check_close(ours=np.array(report["vectors"]), ref=ref, name_ours="ember (sdpa)", name_ref="transformers",
                tol=1e-5, label="fallback")
