"""Where a batch job's vectors go, one shard at a time, each shard committed whole.

- JSONL (a file or stdout): one {"id", "num_tokens", "embedding"} object per line, appended shard
  by shard; the manifest records the byte length of the committed shards, and a resumed job cuts
  the file back to it.
- npy or Parquet into a folder: one part file per shard (`part-00000.npy` with
  `part-00000.ids.json`, or `part-00000.parquet` with id and embedding columns), each written
  under a temporary name and renamed, so a part file is always complete.
- npy or Parquet into one file (`out.npy`, `out.parquet`): the parts go to `out.npy.parts/`, and
  are joined into the file once the last shard is done (streamed, one part at a time).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import orjson

from ember.entrypoints.batch.rows import pyarrow_parquet
from ember.errors import InvalidRequestError

FORMATS = ("jsonl", "npy", "parquet")


@dataclass
class Shard:
    """The rows of one shard, in input order."""

    ids: list[Any]
    texts: list[str]
    vectors: np.ndarray
    num_tokens: list[int]


class Sink:
    """Base: `commit` makes a shard durable; `state` is what the manifest records of the output."""

    path: str
    resumable = True

    def prepare(self, state: dict[str, Any] | None) -> None:
        """Open for writing; `state` is a resumed job's last committed state (None: a new job)."""

    def commit(self, shard: Shard, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def finish(self, num_shards: int) -> None:
        """After the last shard."""

    def remove(self) -> None:
        """Delete the output (--overwrite)."""


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class JsonlSink(Sink):
    """Lines appended to a file (or stdout, which cannot resume)."""

    def __init__(self, path: str, include_text: bool) -> None:
        self.path = path
        self.include_text = include_text
        self.resumable = path != "-"
        self._file: BinaryIO | None = None
        self._bytes = 0

    def prepare(self, state: dict[str, Any] | None) -> None:
        if self.path == "-":
            self._file = sys.stdout.buffer
            return
        self._bytes = state["bytes"] if state else 0
        mode = "r+b" if state and Path(self.path).exists() else "wb"
        self._file = open(self.path, mode)
        self._file.truncate(self._bytes)  # drops a shard that was cut short by a kill
        self._file.seek(self._bytes)

    def commit(self, shard: Shard, index: int) -> dict[str, Any]:
        assert self._file is not None
        data = b"".join(_json_line(shard, i, self.include_text) for i in range(len(shard.ids)))
        self._file.write(data)
        self._file.flush()
        if self.path != "-":
            os.fsync(self._file.fileno())
        self._bytes += len(data)
        return {"bytes": self._bytes}

    def finish(self, num_shards: int) -> None:
        if self._file is not None and self._file is not sys.stdout.buffer:
            self._file.close()

    def remove(self) -> None:
        Path(self.path).unlink(missing_ok=True)


def _json_line(shard: Shard, i: int, include_text: bool) -> bytes:
    record: dict[str, Any] = {"id": shard.ids[i], "num_tokens": shard.num_tokens[i]}
    if include_text:
        record["text"] = shard.texts[i]
    record["embedding"] = shard.vectors[i]
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE)


class PartsSink(Sink):
    """One part file per shard in a folder; with `joined_file`, joined into that file at the end."""

    def __init__(self, path: str, format: str, include_text: bool, joined_file: bool) -> None:
        self.path = path
        self.format = format
        self.include_text = include_text
        self.joined_file = joined_file
        self.folder = Path(path + ".parts") if joined_file else Path(path)

    def prepare(self, state: dict[str, Any] | None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        done = state["shards"] if state else 0
        for stale in self.folder.glob("part-*"):  # a shard written after the last manifest update
            if stale.name.endswith(".tmp") or _part_index(stale) >= done:
                stale.unlink()

    def _part(self, index: int, suffix: str) -> Path:
        return self.folder / f"part-{index:05d}{suffix}"

    def commit(self, shard: Shard, index: int) -> dict[str, Any]:
        if self.format == "npy":
            self._write(self._part(index, ".ids.json"), json.dumps(shard.ids).encode())
            tmp = self._part(index, ".npy.tmp")
            with open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(shard.vectors, dtype=np.float32))
                f.flush()
                os.fsync(f.fileno())
            tmp.rename(self._part(index, ".npy"))
        else:
            pq = pyarrow_parquet("output")
            tmp = self._part(index, ".parquet.tmp")
            pq.write_table(_arrow_table(shard, self.include_text), tmp)
            tmp.rename(self._part(index, ".parquet"))
        return {}

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        tmp = path.with_name(path.name + ".tmp")
        _fsync_write(tmp, data)
        tmp.rename(path)

    def finish(self, num_shards: int) -> None:
        if not self.joined_file:
            return
        target = Path(self.path)
        tmp = target.with_name(target.name + ".tmp")
        if self.format == "npy":
            _join_npy([self._part(i, ".npy") for i in range(num_shards)], tmp)
        else:
            _join_parquet([self._part(i, ".parquet") for i in range(num_shards)], tmp)
        tmp.rename(target)
        shutil.rmtree(self.folder)

    def remove(self) -> None:
        if self.joined_file:
            Path(self.path).unlink(missing_ok=True)
        shutil.rmtree(self.folder, ignore_errors=True)


def _part_index(path: Path) -> int:
    try:
        return int(path.name.split(".")[0].removeprefix("part-"))
    except ValueError:
        return 1 << 62


def _join_npy(parts: list[Path], target: Path) -> None:
    arrays = [np.load(p, mmap_mode="r") for p in parts]
    rows = sum(a.shape[0] for a in arrays)
    dims = arrays[0].shape[1] if arrays else 0
    out = np.lib.format.open_memmap(target, mode="w+", dtype=np.float32, shape=(rows, dims))
    start = 0
    for a in arrays:
        out[start:start + a.shape[0]] = a
        start += a.shape[0]
    out.flush()
    del out


def _join_parquet(parts: list[Path], target: Path) -> None:
    pq = pyarrow_parquet("output")
    writer = None
    for part in parts:
        table = pq.read_table(part)
        if writer is None:
            writer = pq.ParquetWriter(target, table.schema)
        writer.write_table(table)
    if writer is not None:
        writer.close()


def _arrow_table(shard: Shard, include_text: bool) -> Any:
    import pyarrow as pa

    dims = shard.vectors.shape[1]
    flat = pa.array(np.ascontiguousarray(shard.vectors, dtype=np.float32).reshape(-1))
    columns = {"id": pa.array(shard.ids)}
    if include_text:
        columns["text"] = pa.array(shard.texts, type=pa.string())
    columns["num_tokens"] = pa.array(shard.num_tokens, type=pa.int32())
    columns["embedding"] = pa.FixedSizeListArray.from_arrays(flat, dims)
    return pa.table(columns)


def open_sink(path: str, format: str | None, include_text: bool) -> Sink:
    """The sink for `path`: its format from the flag or the extension (.npy, .parquet; else JSONL).
    npy and Parquet go to one file when the path has that extension, else to a folder of parts."""
    suffix = Path(path).suffix.lower()
    if format is None:
        format = {".npy": "npy", ".parquet": "parquet"}.get(suffix, "jsonl")
    if format not in FORMATS:
        raise InvalidRequestError(f"output format must be one of {', '.join(FORMATS)}, got {format!r}",
                                  param="output_format")
    if format == "jsonl":
        if path != "-" and Path(path).is_dir():
            raise InvalidRequestError(f"output {path!r} is a folder; JSONL goes to a file", param="output")
        return JsonlSink(path, include_text)
    if path == "-":
        raise InvalidRequestError(f"{format} output needs a file or folder, not stdout", param="output")
    return PartsSink(path, format, include_text, joined_file=suffix == f".{format}")
