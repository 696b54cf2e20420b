"""Rotary position embeddings: inverse frequencies with the config's scaling (as transformers)."""

from __future__ import annotations

import math
from typing import Any

import torch

from ember.errors import UnsupportedModelError


def rope_parameters(hf: dict[str, Any]) -> dict[str, Any]:
    """rope_parameters (transformers 5) or rope_theta + rope_scaling (4.x), merged."""
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    params.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    if params["rope_type"] not in ("default", "linear", "llama3"):
        raise UnsupportedModelError(
            f"rope_type={params['rope_type']!r} is not supported; supported: default, linear, llama3"
        )
    return params


def rope_inv_freq(p: dict[str, Any], dim: int) -> torch.Tensor:
    """[dim / 2] float32 inverse frequencies, with the scaling of rope_parameters `p` applied (as transformers)."""
    inv_freq = 1.0 / (p["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim))
    if p["rope_type"] == "linear":
        return inv_freq / p["factor"]
    if p["rope_type"] == "llama3":
        factor, low, high = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
        old_len = p["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        return torch.where(is_medium, smoothed, scaled)
    return inv_freq


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply RoPE (half-rotation layout). x [batch, seq, heads, dim]; cos/sin [batch, seq, 1, dim]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
