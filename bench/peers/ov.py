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
    quantize = _quantize_config(opts.get("quantize"))
    if quantize:
        from sentence_transformers.backend import export_dynamic_quantized_onnx_model

        def exported() -> list[Path]:  # model_qint8_avx512_vnni.onnx, but model_quint8_avx2.onnx
            return sorted((folder / "onnx").glob(f"model_q*int8_{quantize}.onnx"))
        if not exported():
            export_dynamic_quantized_onnx_model(
                SentenceTransformer(str(folder), device="cpu", backend="onnx"), quantize, str(folder))
        model_kwargs["file_name"] = f"onnx/{exported()[0].name}"
    if opts.get("precision"):
        model_kwargs["ov_config"] = {"INFERENCE_PRECISION_HINT": opts["precision"]}
    model = SentenceTransformer(str(folder), device="cpu", backend=backend, model_kwargs=model_kwargs)
    model.max_seq_length = job["max_len"]

    def embed(texts: list[str]) -> np.ndarray:
        return np.asarray(model.encode(texts, batch_size=32), dtype=np.float32)

    info = {"version": sentence_transformers.__version__, "precision": _precision(model, backend)}
    if quantize:
        info["onnx_quantize_config"] = quantize
    return embed, info


def _quantize_config(requested: str | None) -> str | None:
    """The ONNX dynamic int8 config for this CPU: "auto" is avx512_vnni where the CPU has VNNI,
    else avx2 (what a user of this CPU would pick)."""
    if requested != "auto":
        return requested
    flags = Path("/proc/cpuinfo").read_text().split()
    return "avx512_vnni" if "avx512_vnni" in flags else "avx2"


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
