"""Damaged model folders are refused at load with a typed error that names the file: truncated or
garbage weights, a config.json that lies about the shapes or the layers, unreadable JSON, and a
pytorch_model.bin whose pickle would run code (refused, never run: weights_only=True)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ember import LLM
from ember.errors import CorruptModelError, UnsupportedModelError


def edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


def truncate_weights(folder: Path) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def truncate_bin(folder: Path) -> None:
    weights = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    data = (folder / "pytorch_model.bin").read_bytes()
    (folder / "pytorch_model.bin").write_bytes(data[: len(data) // 2])


DAMAGES: dict[str, tuple[Callable[[Path], None], type[Exception], str]] = {
    "truncated safetensors": (truncate_weights, CorruptModelError, "model.safetensors"),
    "garbage safetensors": (lambda f: (f / "model.safetensors").write_bytes(b"\0" * 1000), CorruptModelError,
                            "model.safetensors"),
    "truncated pytorch_model.bin": (truncate_bin, CorruptModelError, "pytorch_model.bin"),
    "config.json lies about the width": (lambda f: edit_config(f, hidden_size=64), CorruptModelError, "config.json"),
    "config.json lies about the depth": (lambda f: edit_config(f, num_hidden_layers=5), CorruptModelError,
                                         "config.json"),
    "config.json is not JSON": (lambda f: (f / "config.json").write_text("{not json"), UnsupportedModelError,
                                "config.json"),
    "tokenizer.json is empty": (lambda f: (f / "tokenizer.json").write_text("{}"), UnsupportedModelError,
                                "tokenizer.json"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_folder_is_a_typed_error_naming_the_file(tiny_bert: Path, tmp_path: Path, damage: str) -> None:
    mutate, error, file_name = DAMAGES[damage]
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert, folder)
    mutate(folder)
    with pytest.raises(error) as raised:
        LLM(str(folder), enforce_eager=True)
    assert file_name in str(raised.value), raised.value


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_not_run(tiny_bert: Path, tmp_path: Path) -> None:
    folder, marker = tmp_path / "model", tmp_path / "ran"
    shutil.copytree(tiny_bert, folder)
    (folder / "model.safetensors").unlink()
    torch.save({"weight": _RunsCode(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(CorruptModelError, match=r"pytorch_model\.bin holds Python objects besides tensors"):
        LLM(str(folder), enforce_eager=True)
    assert not marker.exists()
