"""Cutting texts to a token limit: the fast path (slicing the batch's encodings between the special
tokens) must give what encoding again and letting the post-processor add them gives."""

from __future__ import annotations

import pytest

from ember.tokenizer import TextTokenizer
from tests.texts import varied_texts

TEXTS = [*varied_texts()[:40], "a text with a literal [SEP] and </s> inside " * 20, "short", "x" * 3000]


@pytest.mark.parametrize("fixture", ["minilm_path", "tiny_bert", "tiny_xlmr", "tiny_qwen3"])
def test_cut_by_slicing_matches_cut_by_encoding_again(fixture, request):
    fast = TextTokenizer(request.getfixturevalue(fixture))
    slow = TextTokenizer(request.getfixturevalue(fixture))
    slow._affixes = None  # the general path: encode again, post-process
    if fixture != "tiny_qwen3":
        assert fast._affixes == (1, 1)  # [CLS] ... [SEP] and <s> ... </s>
    cut_any = False
    for side in ("right", "left"):
        for limit in (1, 2, 3, 7, 64):
            ours = fast.encode_batch(TEXTS, [limit] * len(TEXTS), side)
            reference = slow.encode_batch(TEXTS, [limit] * len(TEXTS), side)
            assert [t.token_ids for t in ours] == [t.token_ids for t in reference]
            assert [(t.truncated, t.num_original_tokens) for t in ours] == \
                [(t.truncated, t.num_original_tokens) for t in reference]
            cut_any = cut_any or any(t.truncated for t in ours)
    assert cut_any
    assert fast.encode_batch(TEXTS, [None] * len(TEXTS)) == slow.encode_batch(TEXTS, [None] * len(TEXTS))
