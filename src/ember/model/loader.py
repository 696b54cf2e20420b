"""Read a model folder: HF config, weights, sentence-transformers modules -> a ready nn.Module.

Weights are loaded from safetensors (or pytorch_model.bin with weights_only=True) onto a model
built on the meta device, with load_state_dict(assign=True): no second copy of the weights.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ember.errors import CorruptModelError, ModelNotFoundError
from ember.model import gguf
from ember.model.gguf import find_gguf
from ember.model.registry import model_class, resolve_architecture
from ember.model.st_modules import (
    SentenceTransformerModules,
    read_json_object,
    read_st_modules,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ModelFolder:
    """The files of one model folder, parsed."""

    path: Path
    hf_config: dict[str, Any]
    architecture: str
    st: SentenceTransformerModules

    @classmethod
    def read(cls, path: Path) -> ModelFolder:
        gguf_file = find_gguf(path)
        if gguf_file is not None:  # llama.cpp format: the config is in the file's metadata
            config = gguf.hf_config(gguf_file)
            return cls(path, config, resolve_architecture(config), SentenceTransformerModules())
        config_file = path / "config.json"
        if not config_file.is_file():
            present = ", ".join(sorted(p.name for p in path.iterdir())[:12]) or "nothing"
            raise ModelNotFoundError(f"{path} has no config.json, so it is not a model folder (it holds: {present})")
        hf_config = read_json(config_file)
        return cls(path, hf_config, resolve_architecture(hf_config), read_st_modules(path))


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from the model folder (config.json and friends)."""
    return read_json_object(path)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint in `path` (single file or index-sharded)."""
    from safetensors.torch import load_file

    gguf_file = find_gguf(path)
    if gguf_file is not None:
        return gguf.load_weights(gguf_file)
    files = sorted(path.glob("*.safetensors"))
    if files:
        weights: dict[str, torch.Tensor] = {}
        for file in files:
            try:
                weights.update(load_file(str(file)))
            except Exception as exc:  # safetensors raises its own SafetensorError (an Exception)
                raise CorruptModelError(f"{file} is not a readable safetensors file (truncated or damaged?): "
                                        f"{exc}") from exc
        return weights
    bins = sorted(path.glob("pytorch_model*.bin"))
    if bins:
        weights = {}
        for file in bins:
            weights.update(_load_tensors_only(file))
        return weights
    raise ModelNotFoundError(
        f"{path} has no weights: expected model.safetensors (or pytorch_model.bin)"
    )


def _load_tensors_only(file: Path) -> dict[str, torch.Tensor]:
    """A pytorch_model.bin through torch.load(weights_only=True): tensors only, so a pickle that
    would run code is refused, never executed."""
    import pickle

    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        raise CorruptModelError(f"{file} holds Python objects besides tensors; Ember loads only tensors and never "
                                "runs code from a checkpoint: convert it to model.safetensors") from exc
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise CorruptModelError(f"{file} is not a readable PyTorch checkpoint (truncated or damaged?): {exc}") from exc


def build_model(folder: ModelFolder, dtype: torch.dtype) -> nn.Module:
    """Instantiate the architecture and load its weights in `dtype`, in eval mode."""
    cls = model_class(folder.architecture)
    cfg = cls.config_from_hf(folder.hf_config)
    with torch.device("meta"), _no_weight_init():
        model = cls(cfg)
    weights = load_weights(folder.path)
    try:
        state = {k: v.to(dtype) for k, v in model.convert_checkpoint(weights).items()}
        model.load_state_dict(state, strict=True, assign=True)
    except KeyError as exc:
        raise CorruptModelError(f"the weights in {folder.path} have no tensor {exc} that {folder.path / 'config.json'} "
                                f"implies ({folder.architecture}): the config and the weights disagree") from exc
    except RuntimeError as exc:
        raise CorruptModelError(f"the weights in {folder.path} do not fit the {folder.architecture} that "
                                f"{folder.path / 'config.json'} describes: {exc}") from exc
    return model.eval().requires_grad_(False)


_INIT_FUNCTIONS = ("normal_", "uniform_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_",
                   "trunc_normal_", "zeros_", "ones_", "constant_")


@contextlib.contextmanager
def _no_weight_init() -> Iterator[None]:
    """Skip torch.nn.init while the model is built on the meta device: the weights are assigned
    from the checkpoint right after, and initializing meta tensors goes through torch's reference
    ops, whose first use imports torch._dynamo (~2 s of a warm start)."""
    saved = {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTIONS}
    for name in _INIT_FUNCTIONS:
        setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(torch.nn.init, name, function)
