"""sentence-transformers (torch) runner. Options: dtype ("float32" | "bfloat16"), compile (bool)."""

from __future__ import annotations

from typing import Any

import common
import numpy as np


def load(job: dict[str, Any]) -> tuple[common.Embed, dict[str, Any]]:
    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    opts = job["options"]
    model = SentenceTransformer(job["model"], device="cpu")
    model.max_seq_length = job["max_len"]
    if opts.get("dtype") == "bfloat16":
        model = model.to(torch.bfloat16)
    if opts.get("compile"):
        # Lazy: compiles on the first calls, as a user who writes torch.compile(model) gets.
        # sentence-transformers >= 5.2 keeps the transformer in `.model` (`auto_model` is a read-only alias).
        module = model[0]
        attr = "auto_model" if "auto_model" in module._modules else "model"
        setattr(module, attr, torch.compile(getattr(module, attr)))

    def embed(texts: list[str]) -> np.ndarray:
        with torch.inference_mode():
            out = model.encode(texts, batch_size=32, convert_to_tensor=True)
        return out.float().numpy()

    info = {"version": sentence_transformers.__version__, "torch": torch.__version__,
            "threads": torch.get_num_threads()}
    return embed, info


if __name__ == "__main__":
    common.main(load)
