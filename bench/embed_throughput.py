"""Throughput (or --task latency) of Ember and the installed peers, same texts, same run.

    flock /tmp/ember-bench.lock .venv/bin/python bench/embed_throughput.py [--engines ember,st-fp32]

Same as `ember bench`. Peers come from bash bench/setup_peers.sh; missing ones are reported as skipped.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ember.bench.command import add_bench_args, run_bench

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_args(parser)
    print(run_bench(parser.parse_args()))
