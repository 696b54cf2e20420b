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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ember", description="Ember: CPU-first inference engine for embedding models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    embed = sub.add_parser("embed", help="embed lines or JSONL from a file or stdin (offline batch job)")
    add_config_flags(embed, *ENGINE_PARTS)
    embed.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    embed.add_argument("-i", "--input", default="-", help="text lines or JSONL ({\"text\": ...}); default stdin")
    embed.add_argument("-o", "--output", default="-", help=".npy or JSONL output; default stdout (JSONL)")
    embed.add_argument("--truncate", action="store_true", help="truncate over-long prompts instead of failing")
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
