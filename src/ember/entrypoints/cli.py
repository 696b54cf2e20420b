"""`ember` command line: parse arguments -> EngineConfig -> call the offline API or server."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, NoReturn

from ember.config import DEFAULT_MODEL


class _Parser(argparse.ArgumentParser):
    """Bad arguments: one line on stderr, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"ember: error: {message} (see 'ember --help')\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every command that starts an engine."""
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                        help=f"model folder or installed name (default: {DEFAULT_MODEL})")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="compute dtype; auto = bf16 where it is faster on this CPU, else fp32")
    parser.add_argument("--max-model-len", type=_positive_int, help="longest prompt in tokens")
    parser.add_argument("--max-num-batched-tokens", type=_positive_int, default=None,
                        help="padded-token budget of one batch (default: 2048 for encoders, 1024 in int8, 8192 for decoders)")
    parser.add_argument("--max-num-seqs", type=_positive_int, default=64, help="most sequences in one batch")
    parser.add_argument("--enforce-eager", action="store_true", help="do not compile the model")
    parser.add_argument("--quantization", choices=["auto", "int8", "none"], default="auto",
                        help="int8: int8 linears on per-token int8 activations, refused at startup below "
                             "--quantization-min-cosine; auto (default): int8 where the CPU has a fast int8 kernel and --dtype is "
                             "auto, float if int8 misses that bar; none: float (--dtype)")
    parser.add_argument("--quantization-min-cosine", type=float, default=0.999,
                        help="lowest cosine vs float32 the int8 model must reach on the built-in probe set")
    parser.add_argument("--int8-kernel", choices=["auto", "int_mm", "onednn"], default="auto",
                        help="int8 GEMM: int_mm (VNNI/AMX), onednn (AVX2 without VNNI), auto: the fast one here")
    parser.add_argument("--seed", type=int, default=0, help="seed applied after warm-up")
    parser.add_argument("--threads", type=_positive_int, help="intra-op threads (default: physical cores)")
    parser.add_argument("--compile-cache-dir", help="compile cache folder ('' turns the disk cache off)")
    parser.add_argument("--compile-scope", choices=["auto", "model", "layer"], default="auto",
                        help="encoders: compile the whole model, or one layer run once per layer "
                             "(shorter first start, ~0.3 ms more per call); auto: layer for int8, else model")
    parser.add_argument("--memory-limit", type=_positive_int, help="resident memory budget in bytes")
    parser.add_argument("--kv-cache-memory", type=_positive_int, help="KV-cache budget in bytes (decoders)")
    parser.add_argument("--kv-cache-memory-fraction", type=float, default=0.25,
                        help="share of available memory for the KV cache when --kv-cache-memory is unset")
    parser.add_argument("--block-size", type=_positive_int, default=16, help="tokens per KV-cache block")
    parser.add_argument("--pooler-config", type=_json_object, help='JSON, e.g. \'{"pooling_type": "CLS"}\'')
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model": args.model,
        "dtype": args.dtype,
        "max_model_len": args.max_model_len,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "max_num_seqs": args.max_num_seqs,
        "enforce_eager": args.enforce_eager,
        "quantization": None if args.quantization == "none" else args.quantization,
        "quantization_min_cosine": args.quantization_min_cosine,
        "int8_kernel": args.int8_kernel,
        "seed": args.seed,
        "threads": args.threads,
        "compile_cache_dir": args.compile_cache_dir,
        "compile_scope": args.compile_scope,
        "memory_limit": args.memory_limit,
        "kv_cache_memory": args.kv_cache_memory,
        "kv_cache_memory_fraction": args.kv_cache_memory_fraction,
        "block_size": args.block_size,
        "pooler_config": args.pooler_config,
    }


def add_serve_parser(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the OpenAI-compatible embedding server")
    add_engine_args(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to bind (default: 8000)")
    serve.add_argument("--api-key", default=os.environ.get("EMBER_API_KEY") or None,
                       help="require 'Authorization: Bearer KEY' on all routes but /health and /metrics "
                            "(default: $EMBER_API_KEY)")
    serve.add_argument("--served-model-name", help="model name reported and accepted by the API")
    serve.add_argument("--max-waiting-requests", type=_positive_int, default=4096,
                       help="prompts allowed to wait; past it requests get 503 + Retry-After")
    serve.add_argument("--max-body-bytes", type=_positive_int, default=32 * 2**20,
                       help="largest request body; larger ones get 413")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ember", description="Ember: CPU-first inference engine for embedding models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    embed = sub.add_parser("embed", help="embed lines or JSONL from a file or stdin (offline batch job)")
    add_engine_args(embed)
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
        return commands.run(args)
    except EmberError as exc:
        print(f"ember: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
