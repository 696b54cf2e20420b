"""Llama-family decoders vs transformers on tiny random checkpoints (fp32)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ember.model.loader import ModelFolder, build_model
from tests.conftest import check_close

TOL = 1e-4


def _load_pair(path: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    from transformers import AutoModelForCausalLM

    ours = build_model(ModelFolder.read(path), torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return ours, ref


@pytest.fixture(params=["tiny_llama", "tiny_qwen3"])
def decoder_path(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(request.param)


@torch.inference_mode()
def test_logits_match_transformers(decoder_path: Path) -> None:
    ours, ref = _load_pair(decoder_path)
    ids = torch.randint(0, 300, (3, 40), generator=torch.Generator().manual_seed(1))
    expected = ref(ids).logits
    got = ours.logits(ours(ids))
    assert (got - expected).abs().max().item() < TOL
    last = torch.tensor([39, 20, 3])
    logits, _, kv = ours.prefill(ids, last)
    assert (logits - expected[torch.arange(3), last]).abs().max().item() < TOL
    cfg = ours.config
    assert kv.shape == (cfg.num_hidden_layers, 2, 3, 40, cfg.num_key_value_heads, cfg.head_dim)


@torch.inference_mode()
def test_decode_step_through_paged_cache_matches(decoder_path: Path) -> None:
    ours, ref = _load_pair(decoder_path)
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(2))
    expected = ref(ids).logits  # [2, 24, vocab]
    cfg, block_size, prompt = ours.config, 4, 9
    cache = torch.zeros(cfg.num_hidden_layers, 2, 16, block_size, cfg.num_key_value_heads, cfg.head_dim)
    flat = cache.view(cfg.num_hidden_layers, 2, -1, cfg.num_key_value_heads, cfg.head_dim)
    tables = torch.tensor([[3, 1, 7, 5, 2, 9], [4, 6, 8, 10, 11, 12]])  # scattered blocks on purpose
    _, _, kv = ours.prefill(ids[:, :prompt], torch.tensor([prompt - 1] * 2))
    for pos in range(prompt):
        flat[:, :, tables[:, pos // block_size] * block_size + pos % block_size] = kv[:, :, :, pos]
    for pos in range(prompt, 24):
        logits, new = ours.decode(ids[:, pos], torch.tensor([pos, pos]), cache, tables)
        assert (logits - expected[:, pos]).abs().max().item() < TOL, pos
        flat[:, :, tables[:, pos // block_size] * block_size + pos % block_size] = new


@torch.inference_mode()
def test_greedy_32_tokens_match_transformers(decoder_path: Path) -> None:
    ours, ref = _load_pair(decoder_path)
    prompt = torch.tensor([[5, 17, 42, 99, 7, 230]])
    ref.generation_config.eos_token_id = None  # 32 tokens whatever they are
    expected = ref.generate(prompt, max_new_tokens=32, do_sample=False)[0, 6:].tolist()
    assert len(expected) == 32
    ids = prompt
    for _ in range(32):
        next_id = ours.logits(ours(ids)[:, -1]).argmax(-1)
        ids = torch.cat([ids, next_id[:, None]], dim=1)
    assert ids[0, 6:].tolist() == expected


@torch.inference_mode()
def test_qwen3_embedder_hidden_states_match(tiny_qwen3_embedder: Path) -> None:
    from transformers import AutoModel

    ours = build_model(ModelFolder.read(tiny_qwen3_embedder), torch.float32)
    ref = AutoModel.from_pretrained(tiny_qwen3_embedder, dtype=torch.float32).eval()
    ids = torch.randint(0, 300, (2, 17), generator=torch.Generator().manual_seed(3))
    check_close(ours=ours(ids, torch.ones_like(ids)).flatten(0, 1).numpy(),
                ref=ref(ids).last_hidden_state.flatten(0, 1).numpy(),
                name_ours="ember", name_ref="transformers", tol=1e-6)
