"""ONNX Runtime / OpenVINO through sentence-transformers (optimum). Options: backend ("onnx" |
"openvino"), quantize (ONNX dynamic int8 config, e.g. "avx512_vnni"), precision ("f32" to force
OpenVINO's INFERENCE_PRECISION_HINT; default: OpenVINO's own hint, bf16 on AMX CPUs)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import common
import numpy as np

CACHE = Path(os.environ.get("EMBER_BENCH_CACHE", "/tmp/ember-bench-cache"))


def exported_folder(model: str, backend: str) -> Path:
    """A writable copy of the model folder with the exported graph saved (export once, reuse)."""
    from sentence_transformers import SentenceTransformer

    folder = CACHE / f"{Path(model).name}-{backend}"
    marker = folder / f".exported-{backend}"
    if not marker.exists():
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(model, folder)
        SentenceTransformer(str(folder), device="cpu", backend=backend,
                            model_kwargs={"export": True}).save_pretrained(str(folder))
        marker.touch()
    return folder


def load(job: dict[str, Any]) -> tuple[common.Embed, dict[str, Any]]:
    import sentence_transformers
    from sentence_transformers import SentenceTransformer

    opts = job["options"]
    backend = opts["backend"]
    folder = exported_folder(job["model"], backend)
    model_kwargs: dict[str, Any] = {}
    if opts.get("quantize"):
        from sentence_transformers.backend import export_dynamic_quantized_onnx_model

        name = f"onnx/model_qint8_{opts['quantize']}.onnx"
        if not (folder / name).exists():
            export_dynamic_quantized_onnx_model(
                SentenceTransformer(str(folder), device="cpu", backend="onnx"), opts["quantize"], str(folder))
        model_kwargs["file_name"] = name
    if opts.get("precision"):
        model_kwargs["ov_config"] = {"INFERENCE_PRECISION_HINT": opts["precision"]}
    model = SentenceTransformer(str(folder), device="cpu", backend=backend, model_kwargs=model_kwargs)
    model.max_seq_length = job["max_len"]

    def embed(texts: list[str]) -> np.ndarray:
        return np.asarray(model.encode(texts, batch_size=32), dtype=np.float32)

    info = {"version": sentence_transformers.__version__, "precision": _precision(model, backend)}
    return embed, info


def _precision(model: Any, backend: str) -> str | None:
    """OpenVINO's resolved inference precision (bf16 on AMX CPUs unless forced)."""
    if backend != "openvino":
        return None
    try:
        model.encode(["compile the OpenVINO model"])
        hint = model[0].auto_model.request.get_property("INFERENCE_PRECISION_HINT")
        return str(getattr(hint, "get_type_name", lambda: hint)())
    except Exception:
        return None


if __name__ == "__main__":
    common.main(load)
