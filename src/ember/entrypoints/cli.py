"""`ember` command line: parse arguments -> EngineConfig -> call the offline API or server."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, NoReturn

from ember.config import ServerConfig
from ember.entrypoints.args import ENGINE_PARTS, add_config_flags


class _Parser(argparse.ArgumentParser):
    """Bad arguments: one line on stderr, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"ember: error: {message} (see 'ember --help')\n")


def add_serve_parser(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the OpenAI-compatible server (embed, rerank, score, classify, generate)")
    add_config_flags(serve, *ENGINE_PARTS, ServerConfig)
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    on_ray = serve.add_argument_group("on Ray Serve (pip install 'ember[ray]')")
    on_ray.add_argument("--ray", action="store_true", help="serve replicas on Ray Serve (each starts warm)")
    on_ray.add_argument("--ray-address", help="the cluster to join (default: $RAY_ADDRESS, else a local one)")
    on_ray.add_argument("--ray-replicas", type=int, default=1, help="replicas (with --ray-max-replicas: the "
                        "fewest) (default: 1)")
    on_ray.add_argument("--ray-max-replicas", type=int, help="autoscale up to this many replicas on requests in flight")
    on_ray.add_argument("--ray-cpus-per-replica", type=float, default=1, help="CPUs (and threads) per replica "
                        "(default: 1)")


def add_embed_parser(sub: Any) -> None:
    embed = sub.add_parser("embed", help="embed a corpus: text, JSONL or Parquet in; JSONL, npy or Parquet out; "
                           "streamed by shards, resumable after a kill")
    add_config_flags(embed, *ENGINE_PARTS)
    embed.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    job = embed.add_argument_group("batch job")
    job.add_argument("-i", "--input", default="-", help="text lines, JSONL ({\"id\": ..., \"text\": ...}) or "
                     ".parquet; default stdin")
    job.add_argument("-o", "--output", default="-", help="out.jsonl (default: stdout), out.npy, out.parquet, or a "
                     "folder of part files (with --output-format npy|parquet)")
    job.add_argument("--input-format", choices=["text", "jsonl", "parquet"], help="default: from the extension")
    job.add_argument("--output-format", choices=["jsonl", "npy", "parquet"], help="default: from the extension")
    job.add_argument("--text-field", default="text", help="JSONL field / Parquet column of the text (default: text)")
    job.add_argument("--id-field", default="id", help="JSONL field / Parquet column carried to the output as id "
                     "(default: id; rows without one get their line or row number)")
    job.add_argument("--shard-size", type=int, default=4096, help="rows per shard: the unit of output and of "
                     "resume (default: 4096)")
    job.add_argument("--include-text", action="store_true", help="copy each text into the output")
    job.add_argument("--overwrite", action="store_true", help="replace an existing output instead of resuming it")
    job.add_argument("--truncate", action="store_true", help="truncate over-long texts instead of failing")
    on_ray = embed.add_argument_group("on Ray (pip install 'ember[ray]')")
    on_ray.add_argument("--ray", action="store_true", help="run on Ray Data: JSONL or Parquet in, a folder of "
                        "Parquet (or JSONL) files out, one warm engine per actor")
    on_ray.add_argument("--ray-address", help="the cluster to join (default: $RAY_ADDRESS, else a local one)")
    on_ray.add_argument("--ray-actors", type=int, help="engines in the pool (default: cluster CPUs / CPUs per actor)")
    on_ray.add_argument("--ray-cpus-per-actor", type=float, default=1, help="CPUs (and threads) per engine (default: 1)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ember", description="Ember: CPU-first inference engine for embedding models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add_embed_parser(sub)
    sub.add_parser("models", help="list the installed models Ember can load by name")
    add_serve_parser(sub)
    from ember.bench.command import add_bench_args

    add_bench_args(sub.add_parser("bench", help="benchmark Ember against the installed peer engines"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(args, "log_level", "info").upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ember import omp_defaults

    omp_defaults.apply()  # before the commands load torch
    from ember.entrypoints import commands
    from ember.errors import EmberError

    try:
        return commands.run(args, parser)
    except EmberError as exc:
        print(f"ember: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
