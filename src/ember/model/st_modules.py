"""sentence-transformers folder files: modules.json, 1_Pooling/, Normalize, sentence_bert_config.json.

Like sentence-transformers, a Normalize module listed in modules.json counts even when its folder
is absent (the packaged all-MiniLM-L6-v2 ships that way).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ember.errors import UnsupportedModelError

_TRANSFORMER = "sentence_transformers.models.Transformer"
_POOLING = "sentence_transformers.models.Pooling"
_NORMALIZE = "sentence_transformers.models.Normalize"
_DENSE_ACTIVATIONS = ("torch.nn.modules.activation.", "torch.nn.modules.linear.Identity")
"""What a Dense module may name as its activation: torch's own modules (sentence-transformers,
without trust_remote_code, takes only those too)."""
_POOLING_MODES = {
    "pooling_mode_cls_token": "CLS",
    "pooling_mode_mean_tokens": "MEAN",
    "pooling_mode_max_tokens": "MAX",
    "pooling_mode_lasttoken": "LAST",
}


@dataclass(frozen=True, slots=True)
class DenseModule:
    """A sentence-transformers Dense module after pooling: activation(linear(x)) (+ x)."""

    folder: Path
    in_features: int
    out_features: int
    bias: bool
    activation: str
    """A torch.nn module class path, e.g. torch.nn.modules.activation.Tanh."""
    use_residual: bool = False


@dataclass(frozen=True, slots=True)
class SentenceTransformerModules:
    """What a sentence-transformers folder says about pooling and tokenization."""

    is_sentence_transformer: bool = False
    pooling_type: str | None = None
    normalize: bool = False
    max_seq_length: int | None = None
    do_lower_case: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    dense: tuple[DenseModule, ...] = ()
    """Dense modules between pooling and Normalize, in order."""


def read_st_modules(path: Path) -> SentenceTransformerModules:
    modules_file = path / "modules.json"
    st_config = _read_optional(path / "sentence_bert_config.json")
    st_meta = _read_optional(path / "config_sentence_transformers.json")
    if not modules_file.is_file():
        return SentenceTransformerModules()
    modules = _read_list(modules_file)
    pooling_type, normalize, dense = None, False, []
    for module in modules:
        kind = module.get("type", "")
        if kind.endswith(".Transformer") or kind == _TRANSFORMER:
            continue
        if kind == _POOLING or kind.endswith(".Pooling"):
            pooling_type = _pooling_type(path / module.get("path", ""))
        elif kind == _NORMALIZE or kind.endswith(".Normalize"):
            normalize = True
        elif kind.endswith(".Dense"):
            dense.append(_dense(path / module.get("path", "")))
        else:
            raise UnsupportedModelError(
                f"sentence-transformers module {kind!r} in {modules_file} is not supported "
                "(supported: Transformer, Pooling, Dense, Normalize)"
            )
    prompts = st_meta.get("prompts") or {}
    return SentenceTransformerModules(
        is_sentence_transformer=True,
        pooling_type=pooling_type,
        normalize=normalize,
        max_seq_length=st_config.get("max_seq_length"),
        do_lower_case=bool(st_config.get("do_lower_case", False)),
        prompts={str(k): str(v) for k, v in prompts.items()},
        default_prompt_name=st_meta.get("default_prompt_name"),
        dense=tuple(dense),
    )


def _dense(folder: Path) -> DenseModule:
    config = read_json_object(folder / "config.json")
    activation = str(config.get("activation_function") or "torch.nn.modules.linear.Identity")
    if not activation.startswith(_DENSE_ACTIVATIONS):
        raise UnsupportedModelError(f"{folder}: Dense activation {activation!r} is not a torch.nn module; "
                                    "Ember runs torch's own activations only")
    for key, default in (("module_input_name", "sentence_embedding"), ("module_output_name", None)):
        if config.get(key, default) not in (default, "sentence_embedding"):
            raise UnsupportedModelError(f"{folder}: a Dense module on {config.get(key)!r} is not supported "
                                        "(only on the sentence embedding)")
    try:
        return DenseModule(folder, int(config["in_features"]), int(config["out_features"]),
                           bool(config.get("bias", True)), activation, bool(config.get("use_residual", False)))
    except KeyError as exc:
        raise UnsupportedModelError(f"{folder}/config.json has no {exc.args[0]!r}") from None


def _pooling_type(folder: Path) -> str:
    config = _read_optional(folder / "config.json")
    if "pooling_mode" in config:
        mode = str(config["pooling_mode"]).upper()
        mode = {"LASTTOKEN": "LAST", "MEAN_TOKENS": "MEAN"}.get(mode, mode)
        if mode not in _POOLING_MODES.values():
            raise UnsupportedModelError(f"pooling_mode {mode!r} in {folder} is not supported")
        return mode
    chosen = [mode for key, mode in _POOLING_MODES.items() if config.get(key)]
    unsupported = [k for k, v in config.items() if k.startswith("pooling_mode") and v and k not in _POOLING_MODES]
    if unsupported or len(chosen) > 1:
        raise UnsupportedModelError(
            f"pooling config in {folder} asks for {unsupported + chosen}; exactly one of CLS, MEAN, MAX, LAST is supported"
        )
    return chosen[0] if chosen else "MEAN"


def read_json(path: Path) -> Any:
    """Parse a JSON file of the model folder; unreadable or invalid -> UnsupportedModelError."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UnsupportedModelError(f"cannot read {path}: {exc}") from exc


def read_json_object(path: Path) -> dict[str, Any]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise UnsupportedModelError(f"{path} must hold a JSON object")
    return data


def _read_optional(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = read_json(path)
    return data if isinstance(data, dict) else {}


def _read_list(path: Path) -> list[dict[str, Any]]:
    data = read_json(path)
    if not isinstance(data, list):
        raise UnsupportedModelError(f"{path} must hold a JSON list of modules")
    return [m for m in data if isinstance(m, dict)]
