"""The engines a benchmark compares, and how each is started (Ember and peers, each in its venv)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PEERS_DIR = Path(os.environ.get("EMBER_PEERS_DIR", "/work/peers"))


@dataclass(frozen=True, slots=True)
class EngineSpec:
    name: str
    """Short id used on the command line (--engines) and in results."""
    label: str
    """What the table shows."""
    runner: str
    """Runner script under bench/peers/ (ember_engine, st, ov, vllm_cpu)."""
    venv: str | None
    """Peer venv name under PEERS_DIR; None runs in this interpreter (Ember itself)."""
    precision: str
    """fp32 | bf16 | fp16 | int8 | auto: which peers an Ember mode is compared with."""
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def is_ember(self) -> bool:
        return self.runner == "ember_engine"


ENGINES: tuple[EngineSpec, ...] = (
    EngineSpec("ember", "Ember default LLM()", "ember_engine", None, "auto"),
    EngineSpec("ember-fp32", 'Ember dtype="float32"', "ember_engine", None, "fp32", {"dtype": "float32"}),
    EngineSpec("ember-fp32-aten", 'Ember dtype="float32", linear_kernel="aten"', "ember_engine", None, "fp32",
               {"dtype": "float32", "linear_kernel": "aten"}),
    EngineSpec("ember-int8", 'Ember quantization="int8"', "ember_engine", None, "int8", {"quantization": "int8"}),
    EngineSpec("ember-int8-onednn", 'Ember int8_kernel="onednn"', "ember_engine", None, "int8",
               {"int8_kernel": "onednn"}),
    EngineSpec("ember-bf16", 'Ember dtype="bfloat16"', "ember_engine", None, "bf16", {"dtype": "bfloat16"}),
    EngineSpec("st-fp32", "sentence-transformers torch fp32", "st", "st", "fp32", {"dtype": "float32"}),
    EngineSpec("st-fp32-compile", "sentence-transformers torch fp32 + torch.compile", "st", "st", "fp32",
               {"dtype": "float32", "compile": True}),
    EngineSpec("st-bf16", "sentence-transformers torch bf16", "st", "st", "bf16", {"dtype": "bfloat16"}),
    EngineSpec("st-bf16-compile", "sentence-transformers torch bf16 + torch.compile", "st", "st", "bf16",
               {"dtype": "bfloat16", "compile": True}),
    EngineSpec("onnx-fp32", "ONNX Runtime fp32 (via sentence-transformers)", "ov", "ov", "fp32", {"backend": "onnx"}),
    EngineSpec("onnx-int8", "ONNX Runtime int8 dynamic (config for this CPU: avx512_vnni or avx2)", "ov", "ov", "int8",
               {"backend": "onnx", "quantize": "auto"}),
    EngineSpec("openvino", "OpenVINO, default precision hint", "ov", "ov", "auto", {"backend": "openvino"}),
    EngineSpec("openvino-f32", "OpenVINO, INFERENCE_PRECISION_HINT=f32", "ov", "ov", "fp32",
               {"backend": "openvino", "precision": "f32"}),
    EngineSpec("vllm-bf16", "vLLM CPU 0.32 dtype=bfloat16", "vllm_cpu", "vllm", "bf16", {"dtype": "bfloat16"}),
    EngineSpec("vllm-fp32", "vLLM CPU 0.32 dtype=float32", "vllm_cpu", "vllm", "fp32", {"dtype": "float32"}),
    EngineSpec("vllm-fp16", "vLLM CPU 0.32 default dtype (fp16)", "vllm_cpu", "vllm", "fp16", {"dtype": "auto"}),
)


def find_runners_dir() -> Path | None:
    """bench/peers of the source checkout Ember runs from (runners are scripts, not package code)."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[3] / "bench" / "peers", Path.cwd() / "bench" / "peers"):
        if (candidate / "common.py").exists():
            return candidate
    return None


def python_for(spec: EngineSpec) -> Path | None:
    """The interpreter that runs this engine, or None when its venv is not installed."""
    if spec.venv is None:
        return Path(sys.executable)
    venv = PEERS_DIR / spec.venv
    if not (venv / ".ember-peer-ok").exists():
        return None
    return venv / "bin" / "python"


def skip_reason(spec: EngineSpec) -> str | None:
    """Why this engine cannot run here, or None."""
    if python_for(spec) is None:
        return "skipped (not installed: bash bench/setup_peers.sh " + str(spec.venv) + ")"
    if spec.is_ember:
        unknown = sorted(set(spec.options) - _ember_config_fields())
        if unknown:
            return f"skipped (this Ember has no {', '.join(unknown)} option)"
    return None


def _ember_config_fields() -> set[str]:
    from ember import config

    parts = (config.ModelConfig, config.SchedulerConfig, config.CompileConfig, config.DeviceConfig)
    return {f.name for part in parts for f in dataclasses.fields(part)}


def run_engine(spec: EngineSpec, job: dict[str, Any], runners: Path, *, timeout_s: float = 1800) -> dict[str, Any]:
    """Start the runner in its own process; returns its JSON result (or an "error")."""
    python = python_for(spec)
    assert python is not None, spec.name
    with tempfile.TemporaryDirectory(prefix=f"ember-bench-{spec.name}-") as tmp:
        out_dir = Path(job["out_dir"]) / spec.name
        out_dir.mkdir(parents=True, exist_ok=True)
        job_path = Path(tmp) / "job.json"
        job_path.write_text(json.dumps({**job, "options": spec.options, "out_dir": str(out_dir)}))
        try:
            proc = subprocess.run([str(python), str(runners / f"{spec.runner}.py"), str(job_path)],
                                  capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout_s:.0f} s"}
        (out_dir / "stderr.log").write_text(proc.stderr)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"error": f"runner exited {proc.returncode}: {tail[0][:300]}"}
    return json.loads(lines[-1])
