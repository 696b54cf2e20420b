"""Tokenization with the `tokenizers` library: special tokens, truncation, token counts.

The folder's tokenizer.json may carry its own truncation/padding (the packaged MiniLM pads to
128): both are switched off so that the engine alone decides lengths.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tokenizers import Encoding, Tokenizer

from ember.errors import ModelNotFoundError, UnsupportedModelError


@dataclass(frozen=True, slots=True)
class Tokenized:
    """One prompt's token ids (special tokens included) and whether they were cut."""

    token_ids: list[int]
    truncated: bool = False
    num_original_tokens: int = 0


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
        self.do_lower_case = do_lower_case
        self.num_special_tokens = self._tok.num_special_tokens_to_add(is_pair=False)
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

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
        out = []
        for text, enc, limit in zip(texts, encodings, limits):
            n = len(enc.ids)
            if limit is None or n <= limit:
                out.append(Tokenized(enc.ids, False, n))
            else:
                out.append(Tokenized(self._truncate(text, limit, side), True, n))
        return out

    def _truncate(self, text: str, limit: int, side: str) -> list[int]:
        enc: Encoding = self._tok.encode(text, add_special_tokens=False)
        keep = max(limit - self.num_special_tokens, 0)
        enc.truncate(keep, direction=side)
        ids = self._tok.post_process(enc, add_special_tokens=True).ids
        return ids[:limit] if side == "right" else ids[-limit:]

    def decode(self, token_ids: list[int], *, skip_special_tokens: bool = True) -> str:
        return self._tok.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def token_strings(self, token_ids: list[int]) -> list[str]:
        return [self._tok.id_to_token(i) or "" for i in token_ids]
