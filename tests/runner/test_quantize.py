"""int8 mode: smoothed dynamic int8 linears behind a quality gate measured at load."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from ember import LLM
from ember.errors import InvalidRequestError
from ember.runner.quantize import QuantizationQualityError
from tests.texts import varied_texts

SMALL = {"max_num_seqs": 8}


def _vectors(llm: LLM, texts: list[str]) -> np.ndarray:
    return np.stack([o.outputs.data for o in llm.embed(texts, truncate_prompt_tokens=-1)])


def test_int8_minilm_stays_close_to_sentence_transformers(minilm_path):
    """On texts outside the built-in probe set (unicode, code, past 256 tokens, empty-ish)."""
    from sentence_transformers import SentenceTransformer as RefST

    texts = varied_texts(160, seed=77)
    reference = RefST(str(minilm_path), device="cpu").encode(texts, batch_size=32, convert_to_numpy=True)
    llm = LLM(str(minilm_path), quantization="int8")
    ours = _vectors(llm, texts)
    cosine = (ours * reference).sum(axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(reference, axis=1))
    worded = np.array([sum(c.isalnum() for c in t) >= 2 for t in texts])
    print(f"int8 vs sentence-transformers fp32: min cosine {cosine[worded].min():.4f} on texts with words, "
          f"{cosine.min():.4f} overall (punctuation/whitespace-only inputs), mean {cosine.mean():.5f}")
    # Measured: 0.973 on texts with words; 0.946 on inputs such as '...' or '   ', whose few tokens
    # are mostly [CLS]/[SEP] (BENCHMARKS.md, int8 section).
    assert cosine[worded].min() >= 0.965 and cosine.min() >= 0.93 and cosine.mean() >= 0.985
    stats = llm.stats()
    assert stats["quantization"] == "int8" and stats["quantization_min_cosine_measured"] >= 0.98
    assert stats["compiles_after_ready"] == 0


def test_int8_tiny_model_serves_every_batch_size(tiny_bert):
    llm = LLM(str(tiny_bert), quantization="int8", quantization_min_cosine=0.5, **SMALL)
    fp32 = LLM(str(tiny_bert), dtype="float32", enforce_eager=True, **SMALL)
    texts = [("quick brown fox " * n).strip() for n in range(1, 12)]
    ours, ref = _vectors(llm, texts), _vectors(fp32, texts)
    assert ours.shape == ref.shape
    assert ((ours * ref).sum(axis=1) >= llm.stats()["quantization_min_cosine_measured"] - 0.05).all()
    assert llm.stats()["compiles_after_ready"] == 0


def test_the_gate_refuses_a_model_below_the_threshold(tiny_bert):
    with pytest.raises(QuantizationQualityError, match=r"refused.*min cosine of [01]\.\d{8} .*quantization_min_cosine=1"):
        LLM(str(tiny_bert), quantization="int8", quantization_min_cosine=1.0, **SMALL)


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"quantization": "int4"}, "quantization"),
    ({"quantization": "int8", "dtype": "bfloat16"}, "dtype"),
    ({"quantization": "int8", "quantization_min_cosine": 1.5}, "quantization_min_cosine"),
])
def test_bad_quantization_arguments_are_refused(tiny_bert, kwargs, param):
    with pytest.raises(InvalidRequestError) as info:
        LLM(str(tiny_bert), **kwargs)
    assert info.value.param == param


def test_cli_rejects_an_unknown_quantization():
    result = subprocess.run([sys.executable, "-m", "ember.entrypoints.cli", "embed", "--quantization", "int4"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2 and "int4" in result.stderr
