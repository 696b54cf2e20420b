"""A batch embedding job: rows in, vectors out, in fixed-size shards, resumable after a kill.

The input is cut into shards of `shard_size` rows. Each shard is embedded, then committed by the
sink (fsync, rename), then recorded in the manifest (written under a temporary name and renamed).
A job that is killed and run again with the same command reads the manifest, drops whatever was
written after it, skips the rows already done and goes on. Shard boundaries depend only on the
input, so a resumed job computes exactly the shards an uninterrupted one would: the output is
byte for byte the same. Memory holds one shard.

The manifest sits beside a file output (`out.jsonl.ember-job.json`) or inside a folder output
(`_ember_job.json`). A finished job keeps it (with "complete": true): running the command again
is a no-op, not a second copy.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ember.entrypoints.batch.rows import InputSpec, read_rows
from ember.entrypoints.batch.sinks import PartsSink, Shard, Sink
from ember.errors import EmberError, InvalidRequestError

logger = logging.getLogger(__name__)

MANIFEST_VERSION = 1

EmbedFn = Callable[[list[str]], tuple[np.ndarray, list[int]]]
"""Texts -> (vectors [n, dims] float32, token counts)."""


class JobConflictError(EmberError):
    """The output holds another job's results (or files Ember did not write)."""


@dataclass
class JobResult:
    rows: int
    """Rows written in all (a resumed job counts the earlier runs' too)."""
    rows_this_run: int
    seconds: float
    resumed_from: int
    """Rows that were already done when this run started."""
    already_complete: bool = False


def manifest_path(sink: Sink) -> Path | None:
    if not sink.resumable:
        return None
    if isinstance(sink, PartsSink) and not sink.joined_file:
        return Path(sink.path) / "_ember_job.json"
    return Path(sink.path + ".ember-job.json")


def run_job(spec: InputSpec, sink: Sink, embed: Callable[[], EmbedFn], *, job: dict[str, Any],
            shard_size: int, overwrite: bool = False, progress: bool | None = None) -> JobResult:
    """Embed every row of `spec` into `sink`, resuming a matching earlier run of the same job.

    Args:
        embed: builds the embedding function (the engine starts only when there is work to do).
        job: what makes two runs the same job (model, precision, options); a resumed run must match.
        progress: a bar on stderr (None: when stderr is a terminal; else a log line per shard).
    """
    if shard_size < 1:
        raise InvalidRequestError(f"shard size must be at least 1, got {shard_size}", param="shard_size")
    identity = {"input": spec.identity(), "job": job, "shard_size": shard_size}
    mpath = manifest_path(sink)
    state = _resume_state(mpath, sink, identity, overwrite)
    if state is not None and state.get("complete"):
        logger.info("%s is already complete (%d rows); nothing to do", sink.path, state["rows"])
        return JobResult(state["rows"], 0, 0.0, state["rows"], already_complete=True)
    done_rows, done_shards = (state["rows"], state["shards"]) if state else (0, 0)
    if done_rows:
        logger.info("resuming %s after %d rows (%d shards)", sink.path, done_rows, done_shards)
    embed_fn = embed()
    sink.prepare(state)
    start = time.perf_counter()
    reporter = _Progress(spec.count(), done_rows, progress)
    rows, shards = done_rows, done_shards
    sink_state = {k: v for k, v in (state or {}).items() if k == "bytes"}
    for ids, texts in _shards(read_rows(spec, skip=done_rows), shard_size):
        vectors, num_tokens = _embed_shard(embed_fn, ids, texts)
        sink_state.update(sink.commit(Shard(ids, texts, vectors, num_tokens), shards))
        rows, shards = rows + len(ids), shards + 1
        _save(mpath, {**identity, "rows": rows, "shards": shards, "complete": False, **sink_state})
        reporter.update(len(ids), shards)
    if rows == 0:
        raise InvalidRequestError(f"no rows in {'stdin' if spec.path == '-' else spec.path} (blank lines are skipped)",
                                  param="input")
    sink.finish(shards)
    seconds = time.perf_counter() - start
    _save(mpath, {**identity, "rows": rows, "shards": shards, "complete": True,
                  "seconds_last_run": round(seconds, 3), **sink_state})
    reporter.close()
    return JobResult(rows, rows - done_rows, seconds, done_rows)


def _shards(rows: Iterator[tuple[Any, str]], size: int) -> Iterator[tuple[list[Any], list[str]]]:
    while chunk := list(itertools.islice(rows, size)):
        ids, texts = zip(*chunk)
        yield list(ids), list(texts)


def _embed_shard(embed_fn: EmbedFn, ids: list[Any], texts: list[str]) -> tuple[np.ndarray, list[int]]:
    """The shard's vectors; an invalid row's error names its id, not its place in the shard."""
    try:
        return embed_fn(texts)
    except InvalidRequestError as exc:
        match = re.match(r"prompt (\d+)", str(exc))
        if match is None:
            raise
        row = ids[int(match.group(1))]
        raise InvalidRequestError(f"row id={row!r}: {str(exc).replace(match.group(0), 'it', 1)}",
                                  param=exc.param) from None


def _resume_state(mpath: Path | None, sink: Sink, identity: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """The earlier run's state, if this is the same job; None for a new job."""
    if mpath is None:
        return None
    exists = Path(sink.path).exists() or (isinstance(sink, PartsSink) and sink.folder.exists())
    if overwrite:
        sink.remove()
        mpath.unlink(missing_ok=True)
        return None
    if not mpath.exists():
        if exists and not _is_empty_folder(Path(sink.path)):
            raise JobConflictError(f"output {sink.path} exists and was not written by an ember embed job; "
                                   "pass --overwrite to replace it")
        return None
    try:
        state = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise JobConflictError(f"cannot read the job manifest {mpath} ({exc}); pass --overwrite to start again") from None
    differs = [key for key in ("input", "job", "shard_size") if state.get(key) != identity[key]]
    if state.get("version", MANIFEST_VERSION) != MANIFEST_VERSION or differs:
        raise JobConflictError(f"output {sink.path} holds a different job (its {', '.join(differs) or 'version'} "
                               "differs: see its manifest " f"{mpath}); pass --overwrite to replace it, or choose "
                               "another output")
    return state


def _is_empty_folder(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _save(mpath: Path | None, state: dict[str, Any]) -> None:
    if mpath is None:
        return
    tmp = mpath.with_name(mpath.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"version": MANIFEST_VERSION, **state}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    tmp.rename(mpath)


class _Progress:
    """A tqdm bar (texts/s, ETA) on a terminal; otherwise one log line per shard."""

    def __init__(self, total: int | None, done: int, bar: bool | None) -> None:
        self.total, self.done = total, done
        self.start, self.start_done = time.perf_counter(), done
        self.bar = None
        if bar if bar is not None else sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=done, unit="text", desc="Embedding", smoothing=0.1)

    def update(self, rows: int, shards: int) -> None:
        self.done += rows
        if self.bar is not None:
            self.bar.update(rows)
            return
        rate = (self.done - self.start_done) / max(time.perf_counter() - self.start, 1e-9)
        eta = f", ETA {_clock((self.total - self.done) / rate)}" if self.total and rate and self.total > self.done else ""
        of = f"/{self.total}" if self.total else ""
        logger.info("shard %d: %d%s rows, %.1f texts/s%s", shards, self.done, of, rate, eta)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}"
