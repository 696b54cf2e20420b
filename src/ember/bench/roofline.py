"""The physical limit: GEMM peak of this CPU (torch matmul) and the model's FLOPs per token."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

# Shapes of the model's own GEMMs (tokens x hidden x intermediate) plus a square one.
_GEMM_SHAPES = ((4096, 384, 1536), (4096, 1536, 384), (4096, 384, 1152), (2048, 2048, 2048))


def gemm_peak_gflops(dtype: torch.dtype, *, seconds: float = 0.4) -> float:
    """Best GFLOP/s of torch.matmul over a few shapes, on the current intra-op threads."""
    best = 0.0
    for m, k, n in _GEMM_SHAPES:
        a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
        torch.matmul(a, b)  # first call: oneDNN/MKL kernel selection, untimed
        calls, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds or calls < 2:
            torch.matmul(a, b)
            calls += 1
        best = max(best, 2.0 * m * k * n * calls / elapsed / 1e9)
    return best


def has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512_BF16, AMX); elsewhere torch emulates it at
    a fraction of fp32's rate and a bf16 roofline means nothing (and takes minutes to measure).
    A run held to AVX2 (cpu_description's held_to) emulates it too, whatever the CPU has."""
    cpu = cpu_description()
    below_avx512 = cpu["torch_isa"] != "AVX512" or "AVX2" in str(cpu["held_to"].get("ONEDNN_MAX_CPU_ISA", ""))
    return not below_avx512 and bool({"avx512_bf16", "amx_bf16"} & set(cpu["flags"]))


def flops_per_token(model_folder: str, mean_len: float) -> float:
    """Encoder FLOPs per token: the linear layers plus attention scores and values at mean_len."""
    cfg = json.loads((Path(model_folder) / "config.json").read_text())
    hidden, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    linear = 2 * (4 * hidden * hidden + 2 * hidden * inter)  # QKV + output, FFN up + down
    attention = 4 * hidden * mean_len  # QK^T and PV, for one query row
    return float(layers * (linear + attention))


def cpu_description() -> dict[str, object]:
    """CPU model and the flags that decide bf16/int8 speed."""
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile", "avx_vnni")
    # A run held to a narrower ISA than the CPU's (a proxy for an older CPU) says so: the flags
    # above come from /proc/cpuinfo, whatever the kernels were allowed to use.
    held = {name: os.environ[name] for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if name in os.environ}
    return {"model": model, "threads": torch.get_num_threads(),
            "flags": [f for f in wanted if f in flags], "torch_isa": torch.backends.cpu.get_cpu_capability(),
            "held_to": held}
