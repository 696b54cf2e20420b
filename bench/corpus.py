"""Print the benchmark corpus (deterministic, from the standard library's docstrings; no download).

    .venv/bin/python bench/corpus.py short 1024 > short.txt
    .venv/bin/python bench/corpus.py passages 256 --stats
"""

from __future__ import annotations

import argparse
import statistics

from ember.bench import corpus

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=["short", "passages"])
    parser.add_argument("n", type=int)
    parser.add_argument("--stats", action="store_true", help="print counts and a fingerprint instead")
    args = parser.parse_args()
    texts = corpus.load(args.name, args.n)
    if args.stats:
        words = [len(t.split()) for t in texts]
        print(f"{len(texts)} texts, words min {min(words)} mean {statistics.fmean(words):.1f} max {max(words)}, "
              f"fingerprint {corpus.fingerprint(texts)}")
    else:
        print("\n".join(texts))
