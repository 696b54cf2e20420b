"""ModelInfo of a loaded model: what it is, how long its inputs may be, which tasks it serves.
One place for every runner (encoders, cross-encoders, classifiers, decoders)."""

from __future__ import annotations

from typing import Any

from ember.config import ModelConfig, ModelInfo
from ember.errors import InvalidRequestError
from ember.model.loader import ModelFolder, read_json

EMBEDDING_TASKS = ("embed", "token_embed", "score")
"""An embedding model scores a pair by the cosine of its two vectors."""


def describe_model(folder: ModelFolder, model_config: Any, mc: ModelConfig, tokenizer_vocab: int, *,
                   generative: bool, default_max_len: int | None = None, sparse: bool = False,
                   multi_vector: bool = False) -> ModelInfo:
    """The ModelInfo of `folder` loaded as a model whose own config is `model_config`.

    Args:
        tokenizer_vocab: the tokenizer's vocabulary (token ids must fit it and the model's table).
        generative: a decoder with an LM head (LAST pooling, the generate task).
        default_max_len: a cap on the default context (decoders: the KV cache scales with it).
        sparse: the model has a sparse head (SPLADE's masked-LM head, bge-m3's sparse_linear), so it
            also serves the sparse task.
        multi_vector: the model has a multi-vector head (bge-m3's colbert_linear).
        Either head adds the hybrid task: the dense vector and every other output from one forward.
    """
    st = folder.st
    limits = [st.max_seq_length, model_config.max_positions, _tokenizer_max_length(folder), default_max_len]
    max_len = mc.max_model_len or min(x for x in limits if x is not None)
    if max_len > model_config.max_positions:
        raise InvalidRequestError(
            f"max_model_len={max_len} exceeds the model's {model_config.max_positions} positions",
            param="max_model_len")
    pooler = dict(mc.pooler_config or {})
    default_prompt = mc.default_prompt_name or st.default_prompt_name
    if mc.default_prompt_name is not None and mc.default_prompt_name not in st.prompts:
        raise InvalidRequestError(f"default_prompt_name {mc.default_prompt_name!r} is not one of the model's "
                                  f"prompts: {sorted(st.prompts) or 'none'}", param="default_prompt_name")
    labels = _labels(folder.hf_config) if getattr(model_config, "num_labels", 0) else ()
    if generative:
        pooling_type, normalize = "LAST", bool(pooler.get("normalize", True))
        tasks: tuple[str, ...] = ("generate", "embed", "token_embed")
    else:
        pooling_type = str(pooler.get("pooling_type") or st.pooling_type or "CLS").upper()
        normalize = bool(pooler.get("normalize", st.normalize if st.is_sentence_transformer else False))
        tasks = (("classify", "score") if len(labels) == 1 else ("classify",)) if labels else EMBEDDING_TASKS
        tasks += (("sparse",) if sparse else ()) + (("multi_vector",) if multi_vector else ())
        tasks += ("hybrid",) if (sparse or multi_vector) and not labels else ()
    return ModelInfo(
        architecture=folder.architecture,
        hidden_size=model_config.hidden_size,
        max_model_len=max_len,
        pooling_type=pooling_type,
        normalize=normalize,
        vocab_size=min(tokenizer_vocab, model_config.vocab_size),
        tasks=tasks,
        has_kv_cache=generative,
        embedding_dimension=None if labels else (st.dense[-1].out_features if st.dense else model_config.hidden_size),
        prompts=st.prompts,
        default_prompt_name=default_prompt,
        labels=labels,
        multi_label=folder.hf_config.get("problem_type") == "multi_label_classification",
    )


def _labels(hf_config: dict[str, Any]) -> tuple[str, ...]:
    """config.json's id2label in id order (transformers' LABEL_i where it names none)."""
    id2label = hf_config.get("id2label") or {}
    num = int(hf_config.get("num_labels") or len(id2label) or 2)
    return tuple(str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(num))


def _tokenizer_max_length(folder: ModelFolder) -> int | None:
    """tokenizer_config.json's model_max_length, when it is a real limit (transformers writes 1e30
    for none); sentence-transformers' CrossEncoder caps its inputs there."""
    path = folder.path / "tokenizer_config.json"
    if not path.is_file():
        return None
    value = read_json(path).get("model_max_length")
    return int(value) if isinstance(value, (int, float)) and 0 < value < 1_000_000 else None
