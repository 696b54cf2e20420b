"""Session fixtures that build tiny random models on disk, and shared check helpers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.tiny_models import (
    build_tiny_bert,
    build_tiny_distilbert,
    build_tiny_llama,
    build_tiny_mpnet,
    build_tiny_qwen3,
    build_tiny_xlm_roberta,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


LONGEST_FILES = ("runner/test_quantize.py", "runner/test_aot_package.py", "entrypoints/test_ray.py",
                 "model/test_gguf.py", "model/test_modernbert.py", "runner/test_ready_guarantee.py")
"""The files that take longest (minutes each on 2 cores), run first. `-n 2 --dist loadfile` hands
whole files to the workers in collection order; the longest collected last (test_quantize.py,
whose folder sorts late) kept one worker busy for minutes after the other had run out of files."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.path.as_posix()
        return next((i for i, name in enumerate(LONGEST_FILES) if path.endswith(name)), len(LONGEST_FILES))
    items.sort(key=rank)  # stable: the order within a file, and of the other files, stays


@pytest.fixture(scope="session", autouse=True)
def hermetic_compile_cache(tmp_path_factory: pytest.TempPathFactory):
    """Engines built without compile_cache_dir share one fresh cache for the session, not ~/.cache.
    Under pytest-xdist the workers share it too (the run's base folder is their common parent): a
    package one worker built is a cache hit for the other, as for two servers on one cache."""
    old = os.environ.get("XDG_CACHE_HOME")
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "xdg-cache"
    shared.mkdir(exist_ok=True)
    os.environ["XDG_CACHE_HOME"] = str(shared)
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture(scope="session", autouse=True)
def precompiled_headers() -> None:
    """The suite compiles well over a hundred graphs: inductor's precompiled headers, built once
    for the machine (the first worker builds, the other waits on inductor's lock), take ~3.5 s of
    g++ off each (runner/aoti_build.py). A start measured as on a fresh machine (bench/startup.py)
    has its own TMPDIR, so it never sees them."""
    from ember.runner.aoti_build import build_precompiled_headers

    build_precompiled_headers()


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_bert_cls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert-cls"), pooling="CLS", normalize=False)


@pytest.fixture(scope="session")
def tiny_distilbert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_distilbert(tmp_path_factory.mktemp("tiny-distilbert"))


@pytest.fixture(scope="session")
def tiny_mpnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_mpnet(tmp_path_factory.mktemp("tiny-mpnet"))


@pytest.fixture(scope="session")
def tiny_xlmr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_xlm_roberta(tmp_path_factory.mktemp("tiny-xlmr"))


@pytest.fixture(scope="session")
def tiny_xlmr_mean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_xlm_roberta(tmp_path_factory.mktemp("tiny-xlmr-mean"), pooling="MEAN", normalize=True)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture(scope="session")
def tiny_qwen3_embedder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3-embed"), embedder=True)


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    from ember.model.sources import resolve_model_path

    return resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")


def check_close(*, ours: np.ndarray, ref: np.ndarray, name_ours: str, name_ref: str, tol: float,
                label: str = "") -> float:
    """Assert cosine(ours, ref) >= 1 - tol, row by row; returns the min cosine."""
    ours = np.atleast_2d(np.asarray(ours, dtype=np.float64))
    ref = np.atleast_2d(np.asarray(ref, dtype=np.float64))
    assert ours.shape == ref.shape, f"{label}: shape {name_ours} {ours.shape} != {name_ref} {ref.shape}"
    cos = (ours * ref).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))
    worst = int(np.argmin(cos))
    assert cos[worst] >= 1 - tol, (
        f"{label} row {worst}: cosine {cos[worst]:.6f} < {1 - tol}; max abs diff "
        f"{np.abs(ours - ref).max():.3g}\n{name_ours}: {ours[worst][:16]}\n{name_ref}: {ref[worst][:16]}"
    )
    return float(cos.min())


def transformers_pooled(folder: Path, texts: list[str], pooling: str, normalize: bool) -> np.ndarray:
    """The reference vectors: transformers' AutoModel on each text alone (cut at 64 tokens), CLS or
    mean pooled, normalized or not."""
    from tokenizers import Tokenizer
    from transformers import AutoModel

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_truncation(max_length=64)
    model = AutoModel.from_pretrained(folder).eval()
    rows = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tok.encode(text).ids])
            hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
            vec = hidden[0] if pooling == "CLS" else hidden.mean(0)
            rows.append(torch.nn.functional.normalize(vec, dim=0) if normalize else vec)
    return torch.stack(rows).numpy()
