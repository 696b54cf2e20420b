"""A varied, deterministic text set for parity tests (no download)."""

from __future__ import annotations

import random

_WORDS = ("search engine vector embedding model query document passage retrieval ranking cosine "
          "similarity token batch compile warm cache memory thread core latency throughput the a of "
          "and to in is for on with by from this that river mountain music book city night").split()
_UNICODE = ["café au lait", "naïve façade", "Zürich über München", "東京は日本の首都です", "Привет, мир!",
            "مرحبا بالعالم", "emoji 🚀🔥 mixed ✨ text", "Ελληνικά γράμματα", "हिन्दी पाठ", "한국어 문장입니다"]
_CODE = ["def f(x):\n    return x * 2\n", "for (int i = 0; i < n; ++i) { sum += a[i]; }",
         "SELECT id, name FROM users WHERE age > 30 ORDER BY name;", "import numpy as np\nnp.zeros((3, 4))",
         "<div class=\"row\"><span>{{ value }}</span></div>", "fn main() { println!(\"hi\"); }"]
_PUNCT = ["!!!", "...", "?!?!", "(a) [b] {c}", "--- *** ___", "\"quoted\" 'single'", "@#$%^&*"]


def varied_texts(n: int = 320, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    texts: list[str] = ["   ", "\t\n", " ", "a", "0", "3.14159 2.71828 1e-9 42", "1234567890 " * 3]
    texts += _UNICODE + _CODE + _PUNCT
    while len(texts) < n:
        kind = rng.random()
        if kind < 0.5:
            texts.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 30))))
        elif kind < 0.7:
            texts.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(200, 400))))  # past 256 tokens
        elif kind < 0.8:
            texts.append(rng.choice(_UNICODE) + " " + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 40))))
        elif kind < 0.9:
            texts.append(rng.choice(_CODE) * rng.randint(1, 8))
        else:
            texts.append(f"{rng.randint(0, 10**9)} items at ${rng.random() * 1000:.2f}, {rng.choice(_PUNCT)}")
    return texts
