"""Ember runner (Ember's own venv). Options are LLM(...) keyword arguments, e.g. {"dtype": "float32"}."""

from __future__ import annotations

from typing import Any

import common
import numpy as np


def load(job: dict[str, Any]) -> tuple[common.Embed, dict[str, Any]]:
    import ember
    from ember import LLM

    llm = LLM(job["model"], **job["options"])

    def embed(texts: list[str]) -> np.ndarray:  # truncated where the peers truncate (job["max_len"])
        outs = llm.embed(texts, truncate_prompt_tokens=min(job["max_len"], llm.model_info.max_model_len))
        return np.stack([o.outputs.data for o in outs])

    stats = llm.stats()
    precision = ("int8" if stats.get("quantization") == "int8"
                 else {"float32": "fp32", "bfloat16": "bf16"}.get(stats.get("dtype"), stats.get("dtype")))
    info = {"version": getattr(ember, "__version__", "?"), "dtype": stats.get("dtype"), "precision": precision,
            "compiled": stats.get("is_compiled"), "startup_s": stats.get("startup_s"),
            "int8_kernel": stats.get("int8_kernel"),  # the int8 rung that runs, e.g. "int_mm-float-ffn_out"
            "linear_kernel": stats.get("linear_kernel")}  # what runs the float linears
    return embed, info


if __name__ == "__main__":
    common.main(load)
