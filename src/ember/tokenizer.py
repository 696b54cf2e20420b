"""Tokenization with the `tokenizers` library: special tokens, truncation, token counts.

The folder's tokenizer.json may carry its own truncation/padding (the packaged MiniLM pads to
128): both are switched off so that the engine alone decides lengths.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tokenizers import Tokenizer

from ember.errors import ModelNotFoundError, UnsupportedModelError


@dataclass(frozen=True, slots=True)
class Chunk:
    """One window of an over-long text: its token ids (special tokens included) and the span of
    characters it covers, text[start:end]."""

    token_ids: list[int]
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Tokenized:
    """One prompt's token ids (special tokens included) and whether they were cut."""

    token_ids: list[int]
    truncated: bool = False
    num_original_tokens: int = 0
    token_type_ids: list[int] | None = None
    """A pair's segment ids (0 for the first text, 1 for the second); None for one text."""
    chunks: list[Chunk] | None = None
    """long_inputs="chunk": the windows an over-long text was split into (token_ids is then empty)."""


class TextTokenizer:
    """Thread-safe after construction: settings are fixed, calls only read them."""

    def __init__(self, path: Path, *, do_lower_case: bool = False) -> None:
        file = path / "tokenizer.json"
        if not file.is_file():
            raise ModelNotFoundError(f"{path} has no tokenizer.json (Ember reads only the fast tokenizer format)")
        try:
            self._tok = Tokenizer.from_file(str(file))
        except Exception as exc:  # the Rust side raises plain Exception
            raise UnsupportedModelError(f"cannot read {file}: {exc}") from exc
        self._tok.no_truncation()
        self._tok.no_padding()
        self._pair_tokenizers: dict[int, Tokenizer] = {}
        self._pair_lock = threading.Lock()
        self.do_lower_case = do_lower_case
        self.num_special_tokens = self._tok.num_special_tokens_to_add(is_pair=False)
        self.num_pair_special_tokens = self._tok.num_special_tokens_to_add(is_pair=True)
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self._affixes = self._special_affixes()

    def _special_affixes(self) -> tuple[int, int] | None:
        """(leading, trailing) special tokens, when the post-processor only wraps a text in them
        (BERT's [CLS] ... [SEP], RoBERTa's <s> ... </s>, or nothing): then a text is cut by
        slicing its encoding. None for any other post-processor: cut texts are encoded again."""
        probe = "Ember cuts texts to the model's length, keeping the special tokens."
        plain = self._tok.encode(probe, add_special_tokens=False).ids
        full = self._tok.encode(probe, add_special_tokens=True).ids
        for lead in range(len(full) - len(plain) + 1):
            trail = len(full) - len(plain) - lead
            if full[lead:lead + len(plain)] == plain and lead + trail == self.num_special_tokens:
                return lead, trail
        return None

    def encode_batch(
        self,
        texts: list[str],
        limits: list[int | None],
        side: Literal["right", "left"] = "right",
    ) -> list[Tokenized]:
        """Encode texts with special tokens; cut a text to its limit when it has one.

        Args:
            texts: the prompts.
            limits: per text, the most tokens to keep (special tokens included), or None.
            side: which end is cut.
        """
        if self.do_lower_case:
            texts = [t.lower() for t in texts]
        encodings = self._tok.encode_batch(texts, add_special_tokens=True)
        rows = [enc.ids for enc in encodings]
        over = [i for i, (ids, limit) in enumerate(zip(rows, limits)) if limit is not None and len(ids) > limit]
        if self._affixes is not None:
            cut = {i: _cut(rows[i], limits[i], side, *self._affixes) for i in over}  # type: ignore[arg-type]
        else:
            cut = dict(zip(over, self._encode_cut([texts[i] for i in over], [limits[i] for i in over], side)))
        return [Tokenized(cut[i], True, len(ids)) if i in cut else Tokenized(ids, False, len(ids))
                for i, ids in enumerate(rows)]

    def encode_pairs(self, pairs: list[tuple[str, str]], limit: int | None) -> list[Tokenized]:
        """Encode text pairs as cross-encoders read them (BERT: [CLS] a [SEP] b [SEP], segment ids
        0 then 1); over `limit` tokens, the longer text is cut first ("longest_first", as
        transformers and sentence-transformers' CrossEncoder do)."""
        if self.do_lower_case:
            pairs = [(a.lower(), b.lower()) for a, b in pairs]
        full = self._tok.encode_batch(pairs, add_special_tokens=True)
        lengths = [len(enc.ids) for enc in full]
        over = [i for i, n in enumerate(lengths) if limit is not None and n > limit]
        if over:
            assert limit is not None
            cut = self._pair_tokenizer(limit).encode_batch([pairs[i] for i in over], add_special_tokens=True)
            full = list(full)
            for i, enc in zip(over, cut):
                full[i] = enc
        return [Tokenized(enc.ids, n > len(enc.ids), n, enc.type_ids) for enc, n in zip(full, lengths)]

    def cut_texts(self, texts: list[str], max_tokens: int) -> list[str]:
        """Each text cut after its first `max_tokens` tokens (special tokens not counted), at the
        character where the next token starts: Cohere's max_tokens_per_doc."""
        out = []
        for text, enc in zip(texts, self._tok.encode_batch(texts, add_special_tokens=False)):
            out.append(text if len(enc.ids) <= max_tokens else text[: enc.offsets[max_tokens - 1][1]])
        return out

    def chunk(self, text: str, limit: int, overlap: int) -> list[Chunk]:
        """`text` in windows of at most `limit` tokens (special tokens included), each sharing
        `overlap` tokens with the one before, with the character span each covers."""
        if self.do_lower_case:
            text = text.lower()  # spans then index the lowered text: the same length but for a few characters (İ)
        window = limit - self.num_special_tokens
        if window <= overlap:
            raise ValueError(f"a chunk of {limit} tokens leaves no room past an overlap of {overlap}")
        enc = self._tok.encode(text, add_special_tokens=False)
        if not enc.ids:
            return [Chunk(self._tok.post_process(enc, add_special_tokens=True).ids, 0, len(text))]
        enc.truncate(window, stride=overlap)
        return [Chunk(self._tok.post_process(piece, add_special_tokens=True).ids, piece.offsets[0][0],
                      piece.offsets[-1][1]) for piece in (enc, *enc.overflowing)]

    def _pair_tokenizer(self, limit: int) -> Tokenizer:
        """A copy of the tokenizer that truncates pairs to `limit` (one per limit, made once)."""
        with self._pair_lock:
            tok = self._pair_tokenizers.get(limit)
            if tok is None:
                tok = Tokenizer.from_str(self._tok.to_str())
                tok.no_padding()
                tok.enable_truncation(max(limit, self.num_pair_special_tokens), strategy="longest_first")
                self._pair_tokenizers[limit] = tok
            return tok

    def _encode_cut(self, texts: list[str], limits: list[int], side: str) -> list[list[int]]:
        """Encode without special tokens, cut, and let the post-processor add them."""
        out = []
        for enc, limit in zip(self._tok.encode_batch(texts, add_special_tokens=False), limits):
            enc.truncate(max(limit - self.num_special_tokens, 0), direction=side)
            ids = self._tok.post_process(enc, add_special_tokens=True).ids
            out.append(ids[:limit] if side == "right" else ids[-limit:])
        return out

    def decode(self, token_ids: list[int], *, skip_special_tokens: bool = True) -> str:
        return self._tok.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def token_strings(self, token_ids: list[int]) -> list[str]:
        return [self._tok.id_to_token(i) or "" for i in token_ids]

    def token_id(self, token: str) -> int | None:
        """The id of a token string (a special token's, say), None when the vocabulary lacks it."""
        return self._tok.token_to_id(token)


def _cut(ids: list[int], limit: int, side: str, lead: int, trail: int) -> list[int]:
    """Slice a text's tokens between its `lead` and `trail` special tokens: what
    TextTokenizer._encode_cut gives, without encoding again (81 of the bench's 128 passages are
    cut: 92 ms with one encode per text, 37 ms like this)."""
    keep = max(limit - lead - trail, 0)
    body = ids[lead:len(ids) - trail]
    body = body[:keep] if side == "right" else body[len(body) - keep:]
    ids = ids[:lead] + body + ids[len(ids) - trail:]
    return ids[:limit] if side == "right" else ids[-limit:]
