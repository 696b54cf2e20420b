"""Command-line flags generated from the config dataclasses: a field with its `option(...)` is a flag.

    ModelConfig.max_model_len  ->  --max-model-len    (type, choices, help from the field)

Flags that are not given stay out of the namespace (argparse.SUPPRESS), so the dataclasses'
defaults are the only defaults. A value the config refuses exits 2 with the config's message.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import types
import typing
from typing import Any

from ember.config import ENGINE_PARTS as _ENGINE_PARTS
from ember.config import EngineConfig, ServerConfig
from ember.errors import InvalidRequestError

ENGINE_PARTS: tuple[type, ...] = tuple(_ENGINE_PARTS.values())


def add_config_flags(parser: argparse.ArgumentParser, *parts: type) -> None:
    """One flag per field of each config dataclass in `parts` (the model field is positional)."""
    for part in parts:
        hints = typing.get_type_hints(part)
        group = parser.add_argument_group(part.__name__)
        for f in dataclasses.fields(part):
            meta = f.metadata
            if meta.get("cli") == "off":
                continue
            _add_flag(group, f, hints[f.name], meta)


def _add_flag(group: Any, f: dataclasses.Field, hint: Any, meta: Any) -> None:
    default = f.default if f.default is not dataclasses.MISSING else None
    env = meta.get("env")
    help_text = meta.get("help", "")
    if env:
        help_text += f" (default: ${env})"
    elif not (default is None or default is False or default == ""):
        help_text += f" (default: {default})"
    if meta.get("cli") == "positional":
        group.add_argument(f.name, nargs="?", default=argparse.SUPPRESS, help=help_text)
        return
    flag = "--" + f.name.replace("_", "-")
    kwargs: dict[str, Any] = {"dest": f.name, "help": help_text, "default": argparse.SUPPRESS}
    if env and os.environ.get(env):
        kwargs["default"] = os.environ[env]
    base = _base_type(hint)
    if base is bool:
        group.add_argument(flag, action="store_true", **kwargs)
        return
    choices = meta.get("choices")
    if choices is not None:
        words = {meta.get("none_flag") if c is None else str(c): c for c in choices}
        kwargs["type"] = _choice(words)
        kwargs["metavar"] = "{" + ",".join(words) + "}"
    else:
        kwargs["type"] = {int: _integer, float: _number, dict: _json_object}.get(base, str)
    group.add_argument(flag, **kwargs)


def _base_type(hint: Any) -> Any:
    """int | None -> int; dict[str, Any] | None -> dict; Literal[...] -> str."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return str
    return origin or hint


def _choice(words: dict[str | None, Any]) -> Any:
    def parse(text: str) -> Any:
        if text not in words:
            raise argparse.ArgumentTypeError(f"invalid choice {text!r} (choose from {', '.join(map(str, words))})")
        return words[text]
    return parse


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _given(args: argparse.Namespace, *parts: type) -> dict[str, Any]:
    names = {f.name for part in parts for f in dataclasses.fields(part)}
    return {k: v for k, v in vars(args).items() if k in names}


def engine_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> EngineConfig:
    """The EngineConfig of the flags given; a value the config refuses exits 2 naming the flag."""
    try:
        return EngineConfig.from_kwargs(**_given(args, *ENGINE_PARTS))
    except InvalidRequestError as exc:
        parser.error(f"argument --{(exc.param or '').replace('_', '-')}: {exc}")
        raise  # unreachable: parser.error exits


def server_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> ServerConfig:
    config = ServerConfig(**_given(args, ServerConfig))
    try:
        config.verify()
    except InvalidRequestError as exc:
        parser.error(f"argument --{(exc.param or '').replace('_', '-')}: {exc}")
    return config
