"""sentence-transformers' Dense modules as torch modules: what runs on a pooled vector before
Normalize (EmbeddingGemma and many fine-tunes project their vectors this way)."""

from __future__ import annotations

import importlib

import torch
from torch import nn

from ember.errors import UnsupportedModelError
from ember.model.loader import load_weights
from ember.model.st_modules import DenseModule


class Dense(nn.Module):
    def __init__(self, spec: DenseModule) -> None:
        super().__init__()
        self.linear = nn.Linear(spec.in_features, spec.out_features, bias=spec.bias)
        module, _, name = spec.activation.rpartition(".")
        self.activation = getattr(importlib.import_module(module), name)()
        self.residual = (nn.Linear(spec.in_features, spec.out_features, bias=False)
                         if spec.use_residual and spec.in_features != spec.out_features else None)
        self.use_residual = spec.use_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.activation(self.linear(x))
        if self.use_residual:
            out = out + (x if self.residual is None else self.residual(x))
        return out


def load_dense(specs: tuple[DenseModule, ...]) -> nn.Module | None:
    """The Dense modules in order, float32, with their weights; None when the model has none."""
    if not specs:
        return None
    layers = []
    for spec in specs:
        layer = Dense(spec)
        try:
            layer.load_state_dict({k: v.float() for k, v in load_weights(spec.folder).items()}, strict=True)
        except (RuntimeError, KeyError) as exc:
            raise UnsupportedModelError(f"weights in {spec.folder} do not fit its Dense config: {exc}") from exc
        layers.append(layer)
    return nn.Sequential(*layers).eval().requires_grad_(False)
