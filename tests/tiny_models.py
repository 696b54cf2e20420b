"""Builders of tiny random models in the real on-disk layout (config.json, model.safetensors,
tokenizer.json, sentence-transformers modules), loaded by tests through Ember's real loader."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

WORDS = (
    "the of and to in is was for on that with as by at from it an be are this which or his has "
    "had not but were their one all new more also after first two they can its other been who "
    "time year world people city state over only most some would made like between about many "
    "quick brown fox jumps lazy dog cat search engine vector embedding text model query document "
    "python code function return value data token batch cpu fast slow hello ember fire light "
    "water earth music book house river mountain paris france london night day good bad big small"
).split()


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def build_wordpiece_tokenizer(folder: Path, specials: dict[str, str], template: tuple[str, str], *,
                              roberta_pairs: bool = False, model_max_length: int = 512,
                              segment_ids: bool | None = None) -> int:
    """A real WordPiece tokenizer.json; returns the vocab size. specials: role -> token.
    roberta_pairs: pairs as RoBERTa writes them (<s> a </s></s> b </s>, all segment ids 0)."""
    vocab: dict[str, int] = {}
    for token in specials.values():
        vocab.setdefault(token, len(vocab))
    for ch in string.ascii_lowercase + string.digits + string.punctuation:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault("##" + ch, len(vocab))
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(WordPiece(vocab, unk_token=specials["unk_token"], max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    bos, eos = template
    pair = f"{bos} $A {eos} {eos} $B {eos}" if roberta_pairs else f"{bos} $A {eos} $B:1 {eos}:1"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=pair, special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])],
    )
    tok.add_special_tokens(list(specials.values()))
    tok.save(str(folder / "tokenizer.json"))
    # BERT-style tokenizers hand transformers the segment ids (RoBERTa's are all 0 and left out).
    segment_ids = not roberta_pairs if segment_ids is None else segment_ids  # DistilBERT: BERT pairs, no ids
    inputs = ["input_ids", "token_type_ids", "attention_mask"] if segment_ids else ["input_ids", "attention_mask"]
    write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length,
        "model_input_names": inputs, **specials,
    })
    write_json(folder / "special_tokens_map.json", specials)
    return len(vocab)


def write_st_modules(folder: Path, hidden: int, pooling: str, normalize: bool, max_seq_length: int) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    write_json(folder / "modules.json", modules)
    write_json(folder / "1_Pooling" / "config.json", {
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": pooling == "CLS",
        "pooling_mode_mean_tokens": pooling == "MEAN",
        "pooling_mode_max_tokens": pooling == "MAX",
        "pooling_mode_lasttoken": pooling == "LAST",
        "pooling_mode_mean_sqrt_len_tokens": False,
    })
    write_json(folder / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})


def build_tiny_bert(folder: Path, *, pooling: str = "MEAN", normalize: bool = True, max_seq_length: int = 64,
                    hidden_size: int = 32, num_heads: int = 4) -> Path:
    """A random BERT; hidden_size / num_heads sets the head size (Ember's attention kernel runs
    head sizes that are multiples of 32 everywhere: 64 / 2)."""
    from transformers import BertConfig, BertModel

    folder.mkdir(parents=True, exist_ok=True)
    specials = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                "mask_token": "[MASK]"}
    vocab_size = build_wordpiece_tokenizer(folder, specials, ("[CLS]", "[SEP]"))
    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=2,
                        num_attention_heads=num_heads, intermediate_size=2 * hidden_size, max_position_embeddings=128,
                        pad_token_id=0)
    torch.manual_seed(0)
    BertModel(config).eval().save_pretrained(folder, safe_serialization=True)
    write_st_modules(folder, hidden_size, pooling, normalize, max_seq_length)
    return folder


def build_tiny_distilbert(folder: Path, *, pooling: str = "MEAN", normalize: bool = True) -> Path:
    """DistilBERT with sinusoidal position embeddings, as msmarco-distilbert models ship."""
    from transformers import DistilBertConfig, DistilBertModel

    folder.mkdir(parents=True, exist_ok=True)
    specials = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                "mask_token": "[MASK]"}
    vocab_size = build_wordpiece_tokenizer(folder, specials, ("[CLS]", "[SEP]"), segment_ids=False)
    config = DistilBertConfig(vocab_size=vocab_size, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                              max_position_embeddings=128, sinusoidal_pos_embds=True, initializer_range=0.2,
                              pad_token_id=0)
    torch.manual_seed(0)
    DistilBertModel(config).eval().save_pretrained(folder, safe_serialization=True)
    write_st_modules(folder, 32, pooling, normalize, 64)
    return folder


def build_tiny_mpnet(folder: Path, *, pooling: str = "MEAN", normalize: bool = True) -> Path:
    """MPNet (all-mpnet-base-v2's architecture): relative position buckets, positions from 2."""
    from transformers import MPNetConfig, MPNetModel

    folder.mkdir(parents=True, exist_ok=True)
    specials = {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
                "cls_token": "<s>", "sep_token": "</s>", "mask_token": "<mask>"}
    vocab_size = build_wordpiece_tokenizer(folder, specials, ("<s>", "</s>"), roberta_pairs=True)
    config = MPNetConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=130, relative_attention_num_buckets=32,
                         initializer_range=0.2, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    torch.manual_seed(0)
    MPNetModel(config, add_pooling_layer=False).eval().save_pretrained(folder, safe_serialization=True)
    write_st_modules(folder, 32, pooling, normalize, 64)
    return folder


def build_tiny_xlm_roberta(folder: Path, *, pooling: str = "CLS", normalize: bool = False,
                           max_seq_length: int = 64) -> Path:
    from transformers import XLMRobertaConfig, XLMRobertaModel

    folder.mkdir(parents=True, exist_ok=True)
    specials = {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
                "cls_token": "<s>", "sep_token": "</s>", "mask_token": "<mask>"}
    vocab_size = build_wordpiece_tokenizer(folder, specials, ("<s>", "</s>"))
    config = XLMRobertaConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=64, max_position_embeddings=130, type_vocab_size=1,
                              pad_token_id=1, bos_token_id=0, eos_token_id=2)
    torch.manual_seed(0)
    XLMRobertaModel(config, add_pooling_layer=False).eval().save_pretrained(folder, safe_serialization=True)
    write_st_modules(folder, 32, pooling, normalize, max_seq_length)
    return folder


CLASSIFIER_KINDS = ("bert", "roberta", "xlm-roberta", "distilbert")
LABELS_3 = {0: "negative", 1: "neutral", 2: "positive"}


def build_tiny_classifier(folder: Path, kind: str = "bert", num_labels: int = 1, *,
                          problem_type: str | None = None, hidden_size: int = 32, num_layers: int = 2,
                          intermediate_size: int = 64) -> Path:
    """A sequence-classification checkpoint as transformers saves it (no sentence-transformers
    files): one label is a cross-encoder reranker, several a classifier. Weights are drawn wider
    than transformers' default (std 0.2) so that scores spread and rank orders are meaningful."""
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    bert = kind in ("bert", "distilbert")
    specials = ({"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                 "mask_token": "[MASK]"} if bert else
                {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
                 "cls_token": "<s>", "sep_token": "</s>", "mask_token": "<mask>"})
    template = ("[CLS]", "[SEP]") if bert else ("<s>", "</s>")
    vocab_size = build_wordpiece_tokenizer(folder, specials, template, roberta_pairs=not bert, model_max_length=128,
                                           segment_ids=kind == "bert")
    config_cls, model_cls = {
        "bert": (transformers.BertConfig, transformers.BertForSequenceClassification),
        "roberta": (transformers.RobertaConfig, transformers.RobertaForSequenceClassification),
        "xlm-roberta": (transformers.XLMRobertaConfig, transformers.XLMRobertaForSequenceClassification),
        "distilbert": (transformers.DistilBertConfig, transformers.DistilBertForSequenceClassification),
    }[kind]
    labels = {0: "relevance"} if num_labels == 1 else {i: LABELS_3.get(i, f"LABEL_{i}") for i in range(num_labels)}
    extra = {"pad_token_id": 0} if bert else {"pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
                                               "type_vocab_size": 1}
    sizes = ({"dim": hidden_size, "n_layers": num_layers, "n_heads": 4, "hidden_dim": intermediate_size}
             if kind == "distilbert" else
             {"hidden_size": hidden_size, "num_hidden_layers": num_layers, "num_attention_heads": 4,
              "intermediate_size": intermediate_size})
    config = config_cls(vocab_size=vocab_size, max_position_embeddings=128 if bert else 130, initializer_range=0.2,
                        num_labels=num_labels, id2label=labels, label2id={v: k for k, v in labels.items()},
                        problem_type=problem_type, **sizes, **extra)
    torch.manual_seed(0)
    model_cls(config).eval().save_pretrained(folder, safe_serialization=True)
    return folder


CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_bpe_tokenizer(folder: Path, *, bos: str | None, vocab_size: int = 320) -> dict[str, int]:
    """A real byte-level BPE tokenizer.json trained on WORDS, with ChatML specials and a chat
    template in tokenizer_config.json; returns the special tokens' ids."""
    from tokenizers import models, trainers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + ([bos] if bos else [])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(0, len(WORDS), 7)]
    tok.train_from_iterator(corpus, trainer)
    ids = {s: tok.token_to_id(s) for s in specials}
    if bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1",
                                                           special_tokens=[(bos, ids[bos])])
    tok.save(str(folder / "tokenizer.json"))
    write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 256, "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "bos_token": bos, "chat_template": CHAT_TEMPLATE,
    })
    return ids


def build_tiny_llama(folder: Path, *, tie_word_embeddings: bool = False) -> Path:
    """Llama with GQA and llama3 RoPE scaling; 2 layers, hidden 32."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    ids = build_bpe_tokenizer(folder, bos="<s>")
    config = LlamaConfig(
        vocab_size=384, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=256, initializer_range=0.2, tie_word_embeddings=tie_word_embeddings,
        rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64},
        bos_token_id=ids["<s>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).eval().save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_qwen3(folder: Path, *, embedder: bool = False) -> Path:
    """Qwen3 (q/k norms, head_dim != hidden / heads, tied embeddings). embedder=True saves the bare
    Qwen3Model with sentence-transformers LAST-token pooling, as Qwen3-Embedding ships."""
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

    folder.mkdir(parents=True, exist_ok=True)
    ids = build_bpe_tokenizer(folder, bos=None)
    config = Qwen3Config(
        vocab_size=384, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, intermediate_size=64, max_position_embeddings=256, initializer_range=0.2,
        tie_word_embeddings=True, rope_theta=1000000.0,
        bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )
    torch.manual_seed(0)
    cls = Qwen3Model if embedder else Qwen3ForCausalLM
    cls(config).eval().save_pretrained(folder, safe_serialization=True)
    if embedder:
        write_st_modules(folder, 32, "LAST", True, 128)
    return folder


def build_tiny_modernbert(folder: Path, *, num_labels: int = 0, classifier_pooling: str = "cls",
                          local_attention: int = 8) -> Path:
    """ModernBERT: 3 layers, global-local-global (global_attn_every_n_layers=2), a local window of
    `local_attention` tokens (shorter than the test texts, so the local mask matters), two RoPE
    bases. num_labels > 0: a ModernBertForSequenceClassification checkpoint (no sentence-
    transformers files); else a ModernBertModel with MEAN pooling + Normalize."""
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    specials = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                "mask_token": "[MASK]"}
    vocab_size = build_wordpiece_tokenizer(folder, specials, ("[CLS]", "[SEP]"), segment_ids=False,
                                           model_max_length=128)
    labels = {0: "relevance"} if num_labels == 1 else {i: LABELS_3.get(i, f"LABEL_{i}") for i in range(num_labels)}
    config = transformers.ModernBertConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=128, global_attn_every_n_layers=2, local_attention=local_attention,
        global_rope_theta=160_000.0, local_rope_theta=10_000.0, pad_token_id=0, bos_token_id=2, eos_token_id=3,
        cls_token_id=2, sep_token_id=3, initializer_range=0.2, classifier_pooling=classifier_pooling,
        **({"num_labels": num_labels, "id2label": labels, "label2id": {v: k for k, v in labels.items()}}
           if num_labels else {}))
    torch.manual_seed(0)
    cls = transformers.ModernBertForSequenceClassification if num_labels else transformers.ModernBertModel
    cls(config).eval().save_pretrained(folder, safe_serialization=True)
    if not num_labels:
        write_st_modules(folder, 32, "MEAN", True, 128)
    return folder


EMBEDDING_GEMMA_PROMPTS = {"query": "task: search result | query: ", "document": "title: none | text: "}


def build_tiny_embedding_gemma(folder: Path, *, sliding_window: int = 8) -> Path:
    """EmbeddingGemma's layout: a bidirectional Gemma3TextModel (GQA, q/k norms, sliding and full
    layers with two RoPE bases), MEAN pooling, two Dense modules (32 -> 64 -> 32, no activation)
    and Normalize, with query/document prompts in config_sentence_transformers.json."""
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    specials = {"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>", "unk_token": "<unk>",
                "mask_token": "<mask>"}
    vocab_size = build_wordpiece_tokenizer(folder, specials, ("<bos>", "<eos>"), segment_ids=False,
                                           model_max_length=128)
    config = transformers.Gemma3TextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, max_position_embeddings=128,
        sliding_window=sliding_window, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_theta=1_000_000.0, rope_local_base_freq=10_000.0, use_bidirectional_attention=True,
        pad_token_id=0, eos_token_id=1, bos_token_id=2, initializer_range=0.2)
    config.architectures = ["Gemma3TextModel"]
    torch.manual_seed(0)
    model = transformers.Gemma3TextModel(config).eval()
    with torch.no_grad():  # Gemma's norms store (scale - 1): draw them away from 0 so they matter
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(0.0, 0.3)
    model.save_pretrained(folder, safe_serialization=True)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
        {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"},
        {"idx": 4, "name": "4", "path": "4_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    write_json(folder / "modules.json", modules)
    write_json(folder / "1_Pooling" / "config.json", {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True})
    for path, (n_in, n_out) in (("2_Dense", (32, 64)), ("3_Dense", (64, 32))):
        from safetensors.torch import save_file

        write_json(folder / path / "config.json", {"in_features": n_in, "out_features": n_out, "bias": False,
                                                   "activation_function": "torch.nn.modules.linear.Identity"})
        save_file({"linear.weight": torch.randn(n_out, n_in) * 0.3}, str(folder / path / "model.safetensors"))
    write_json(folder / "sentence_bert_config.json", {"max_seq_length": 128, "do_lower_case": False})
    write_json(folder / "config_sentence_transformers.json", {"prompts": EMBEDDING_GEMMA_PROMPTS,
                                                              "default_prompt_name": None,
                                                              "similarity_fn_name": "cosine"})
    return folder
