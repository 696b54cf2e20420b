"""GGUF files (llama.cpp): config, weights dequantized to float32, and the tokenizer they carry.

A folder holding one .gguf file and no config.json is a GGUF model folder. Its metadata becomes
an HF-style config dict, its tensors get HF names (llama's q/k rows are un-permuted back from
llama.cpp's rotary layout, as transformers does), and its vocabulary becomes a byte-level BPE
tokenizer.json with the chat template, written once to a cache folder (the model's own folder
may be read-only, e.g. inside site-packages).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ember.errors import UnsupportedModelError

logger = logging.getLogger(__name__)

_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
_CONTROL = 3  # llama.cpp token type of special tokens
_NAMES = [
    (r"token_embd\.weight", "model.embed_tokens.weight"),
    (r"output_norm\.weight", "model.norm.weight"),
    (r"output\.weight", "lm_head.weight"),
    (r"blk\.(\d+)\.attn_norm\.(\w+)", r"model.layers.\1.input_layernorm.\2"),
    (r"blk\.(\d+)\.ffn_norm\.(\w+)", r"model.layers.\1.post_attention_layernorm.\2"),
    (r"blk\.(\d+)\.attn_q\.(\w+)", r"model.layers.\1.self_attn.q_proj.\2"),
    (r"blk\.(\d+)\.attn_k\.(\w+)", r"model.layers.\1.self_attn.k_proj.\2"),
    (r"blk\.(\d+)\.attn_v\.(\w+)", r"model.layers.\1.self_attn.v_proj.\2"),
    (r"blk\.(\d+)\.attn_output\.(\w+)", r"model.layers.\1.self_attn.o_proj.\2"),
    (r"blk\.(\d+)\.attn_q_norm\.(\w+)", r"model.layers.\1.self_attn.q_norm.\2"),
    (r"blk\.(\d+)\.attn_k_norm\.(\w+)", r"model.layers.\1.self_attn.k_norm.\2"),
    (r"blk\.(\d+)\.ffn_gate\.(\w+)", r"model.layers.\1.mlp.gate_proj.\2"),
    (r"blk\.(\d+)\.ffn_up\.(\w+)", r"model.layers.\1.mlp.up_proj.\2"),
    (r"blk\.(\d+)\.ffn_down\.(\w+)", r"model.layers.\1.mlp.down_proj.\2"),
]


def find_gguf(path: Path) -> Path | None:
    """The .gguf file of a folder without config.json, or None."""
    if path.is_file() and path.suffix == ".gguf":
        return path
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    files = sorted(path.glob("*.gguf"))
    if len(files) > 1:
        raise UnsupportedModelError(f"{path} holds several .gguf files ({', '.join(f.name for f in files)}); "
                                    "pass the folder of one model")
    return files[0] if files else None


def _reader(file: Path) -> Any:
    try:
        from gguf import GGUFReader
    except ImportError as exc:
        raise UnsupportedModelError(f"{file} is a GGUF file; reading it needs the gguf package: pip install gguf") from exc
    return GGUFReader(str(file))


_VOCABULARY = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores")


@dataclass(frozen=True, slots=True)
class _Tensor:
    """Where one tensor's bytes are in the file and how to read them."""

    name: str
    tensor_type: Any  # gguf.GGMLQuantizationType
    shape: tuple[int, ...]  # GGUF order: fastest-varying dimension first
    offset: int
    stored_dtype: np.dtype  # the bytes as GGUFReader views them (uint8 blocks for quantized types)
    stored_shape: tuple[int, ...]

    @property
    def stored_bytes(self) -> int:
        return int(np.prod(self.stored_shape)) * self.stored_dtype.itemsize


@dataclass(frozen=True, slots=True)
class _Header:
    metadata: dict[str, Any]
    """Every field but the (large) vocabulary arrays."""
    tensors: tuple[_Tensor, ...]
    vocabulary_size: int

    @property
    def tensor_names(self) -> frozenset[str]:
        return frozenset(t.name for t in self.tensors)


def _header(file: Path) -> _Header:
    """The file's metadata and tensor names, parsed once per file version: GGUFReader parses the
    whole vocabulary in Python (seconds for a 49k-token one), and a load asks for the config twice."""
    stat = file.stat()
    return _parsed_header(file.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _parsed_header(file: Path, size: int, mtime_ns: int) -> _Header:
    reader = _reader(file)  # not kept: it maps the whole file
    fields = reader.fields
    tensors = tuple(_Tensor(t.name, t.tensor_type, tuple(int(d) for d in t.shape), int(t.data_offset), t.data.dtype,
                            tuple(t.data.shape)) for t in reader.tensors)
    return _Header({k: f.contents() for k, f in fields.items() if k not in _VOCABULARY}, tensors,
                   len(fields["tokenizer.ggml.tokens"].data) if "tokenizer.ggml.tokens" in fields else 0)


def read_metadata(file: Path) -> dict[str, Any]:
    """Every scalar/string/array field except the (large) vocabulary arrays."""
    return dict(_header(file).metadata)


def hf_config(file: Path) -> dict[str, Any]:
    """GGUF metadata -> a config.json-style dict."""
    header = _header(file)
    meta = header.metadata
    arch = meta.get("general.architecture")
    if arch not in _ARCHITECTURES:
        raise UnsupportedModelError(f"GGUF architecture {arch!r} is not supported; supported: {sorted(_ARCHITECTURES)}")
    names = header.tensor_names
    heads = meta[f"{arch}.attention.head_count"]
    hidden = meta[f"{arch}.embedding_length"]
    return {
        "architectures": [_ARCHITECTURES[arch]], "model_type": arch,
        "vocab_size": meta.get(f"{arch}.vocab_size") or header.vocabulary_size,
        "hidden_size": hidden, "num_hidden_layers": meta[f"{arch}.block_count"],
        "num_attention_heads": heads, "num_key_value_heads": meta.get(f"{arch}.attention.head_count_kv", heads),
        "head_dim": meta.get(f"{arch}.attention.key_length") or hidden // heads,
        "intermediate_size": meta[f"{arch}.feed_forward_length"],
        "rms_norm_eps": meta[f"{arch}.attention.layer_norm_rms_epsilon"],
        "max_position_embeddings": meta[f"{arch}.context_length"],
        "rope_theta": meta.get(f"{arch}.rope.freq_base", 10000.0),
        "attention_bias": "blk.0.attn_q.bias" in names,
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
    }


def load_weights(file: Path) -> dict[str, torch.Tensor]:
    """All tensors with HF names, dequantized to float32 (the loader casts to the run dtype). Reads
    the bytes where the parsed header says they are, so the file's fields are not parsed again."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    header = _header(file)
    config = hf_config(file)
    mapped = np.memmap(file, dtype=np.uint8, mode="r")
    out: dict[str, torch.Tensor] = {}
    for t in header.tensors:
        name = _hf_name(t.name)
        stored = mapped[t.offset:t.offset + t.stored_bytes].view(t.stored_dtype).reshape(t.stored_shape)
        # F32 tensors would be read-only views of the memory-mapped file: copy them
        data = np.array(stored) if t.tensor_type == GGMLQuantizationType.F32 else dequantize(stored, t.tensor_type)
        data = np.ascontiguousarray(data, dtype=np.float32).reshape(tuple(reversed(t.shape)))
        if config["model_type"] == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config["num_attention_heads"] if "q_proj" in name else config["num_key_value_heads"]
            data = _unpermute(data, heads)
        out[name] = torch.from_numpy(data)
    del mapped
    return out


def _hf_name(name: str) -> str:
    for pattern, repl in _NAMES:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, repl, name)
    raise UnsupportedModelError(f"GGUF tensor {name!r} has no known meaning for this architecture")


def _unpermute(weights: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's interleaving of each head's rotary halves (transformers does the same)."""
    dim = weights.shape[0] // heads // 2
    return weights.reshape(heads, dim, 2, *weights.shape[1:]).swapaxes(2, 1).reshape(weights.shape)


def tokenizer_folder(file: Path) -> Path:
    """A folder with tokenizer.json and tokenizer_config.json (chat template) built from the file."""
    stat = file.stat()
    key = hashlib.sha256(f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = base / "ember" / "gguf-tokenizers" / f"{file.stem}-{key}"
    if not (folder / "tokenizer.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        _write_tokenizer(file, folder)
        logger.info("wrote the tokenizer of %s to %s", file.name, folder)
    return folder


def _write_tokenizer(file: Path, folder: Path) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    fields = _reader(file).fields
    meta = read_metadata(file)
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise UnsupportedModelError(f"GGUF tokenizer {meta.get('tokenizer.ggml.model')!r} is not supported (only gpt2 BPE)")
    tokens = fields["tokenizer.ggml.tokens"].contents()
    merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"].contents()]
    types = fields["tokenizer.ggml.token_type"].contents()
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, kind in zip(tokens, types) if kind == _CONTROL])
    tmp = folder / "tokenizer.json.tmp"
    tok.save(str(tmp))
    os.replace(tmp, folder / "tokenizer.json")

    def token(key: str) -> str | None:
        index = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[index] if index is not None else None

    config = {"chat_template": meta.get("tokenizer.chat_template"), "bos_token": token("bos"),
              "eos_token": token("eos"), "pad_token": token("padding"), "unk_token": token("unknown")}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
