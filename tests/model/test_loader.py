"""Loader paths beyond the default: pytorch_model.bin, bf16, sentence-transformers options."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from ember import LLM, InvalidRequestError, PoolingParams, SentenceTransformer
from tests.conftest import check_close

TEXTS = ["quick brown fox", "the lazy dog sleeps", "hello world " * 10, "python code"]


def test_pytorch_model_bin_loads_the_same_weights(tiny_bert, tmp_path):
    from safetensors.torch import load_file

    folder = tmp_path / "bin-model"
    shutil.copytree(tiny_bert, folder)
    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    ours = np.stack([o.outputs.data for o in LLM(str(folder), dtype="float32", enforce_eager=True).embed(TEXTS)])
    ref = np.stack([o.outputs.data for o in LLM(str(tiny_bert), dtype="float32", enforce_eager=True).embed(TEXTS)])
    np.testing.assert_array_equal(ours, ref)


def test_bfloat16_stays_within_parity_tolerance(tiny_bert):
    bf16 = LLM(str(tiny_bert), dtype="bfloat16", enforce_eager=True)
    fp32 = LLM(str(tiny_bert), dtype="float32", enforce_eager=True)
    assert bf16.stats()["dtype"] == "bfloat16"
    check_close(ours=np.stack([o.outputs.data for o in bf16.embed(TEXTS)]),
                ref=np.stack([o.outputs.data for o in fp32.embed(TEXTS)]),
                name_ours="bf16", name_ref="fp32", tol=1e-2)


def test_auto_dtype_resolves_to_a_concrete_dtype(tiny_bert):
    assert LLM(str(tiny_bert), enforce_eager=True).stats()["dtype"] in ("float32", "bfloat16")


def test_st_prompts_and_output_options(tiny_bert, tmp_path):
    folder = tmp_path / "prompted"
    shutil.copytree(tiny_bert, folder)
    (folder / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": None}))
    model = SentenceTransformer(str(folder), dtype="float32", enforce_eager=True)
    plain = model.encode("query: quick brown fox")
    np.testing.assert_allclose(model.encode("quick brown fox", prompt_name="query"), plain, atol=1e-6)
    np.testing.assert_allclose(model.encode("quick brown fox", prompt="query: "), plain, atol=1e-6)
    with pytest.raises(InvalidRequestError, match="known prompts"):
        model.encode("x", prompt_name="nope")
    tensor = model.encode(TEXTS, convert_to_tensor=True, normalize_embeddings=True)
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (4, 32)
    assert torch.allclose(tensor.norm(dim=1), torch.ones(4), atol=1e-5)
    assert model.encode(TEXTS, truncate_dim=8).shape == (4, 8)
    assert model.encode([]).shape == (0,)
    assert model.get_sentence_embedding_dimension() == 32


def test_st_dense_modules_run_after_pooling(tiny_bert, tmp_path):
    """A sentence-transformers folder with two Dense modules (32 -> 24 tanh, 24 -> 16 identity)
    before Normalize, as saved by sentence-transformers itself: Ember equals it."""
    from sentence_transformers import SentenceTransformer as Reference
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    torch.manual_seed(0)
    modules = [Transformer(str(tiny_bert), max_seq_length=64), Pooling(32, "mean"),
               Dense(32, 24, activation_function=torch.nn.Tanh()),
               Dense(24, 16, activation_function=torch.nn.Identity()), Normalize()]
    folder = tmp_path / "dense"
    Reference(modules=modules, device="cpu").save(str(folder))
    reference = Reference(str(folder), device="cpu").encode(TEXTS)
    llm = LLM(str(folder), dtype="float32", enforce_eager=True)
    assert llm.model_info.embedding_dimension == 16
    ours = np.stack([o.outputs.data for o in llm.embed(TEXTS)])
    check_close(ours=ours, ref=reference, name_ours="ember", name_ref="sentence-transformers", tol=1e-5)
    cut = llm.embed("quick brown fox", pooling_params=PoolingParams(dimensions=8))[0]
    assert cut.outputs.data.shape == (8,)  # matryoshka cuts the Dense output
