"""Input rows of a batch job, read lazily: plain text lines, JSONL records or Parquet rows.

Each row is (id, text). The id is the record's own id field when it has one, else its position
in the input (the 0-based line number for text and JSONL, blank lines counted, so it points back
into the file; the row number for Parquet). Blank lines are skipped. Memory stays constant: one
line, or one Parquet record batch, at a time.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ember.errors import InvalidRequestError

FORMATS = ("text", "jsonl", "parquet")


@dataclass(frozen=True)
class InputSpec:
    """Where the rows come from and how to read them."""

    path: str
    """A file, or "-" for stdin."""
    format: str
    """"text", "jsonl" or "parquet"."""
    text_field: str = "text"
    id_field: str = "id"

    @classmethod
    def of(cls, path: str, format: str | None = None, text_field: str = "text", id_field: str = "id") -> InputSpec:
        """The spec of `path`, its format from the flag or else from the extension: .parquet, or
        text, in which a line that starts with "{" is a JSON record (so .jsonl files and files that
        mix both read alike). "jsonl" given explicitly requires every line to be a JSON record."""
        if format is None:
            format = "parquet" if Path(path).suffix.lower() == ".parquet" else "text"
        if format not in FORMATS:
            raise InvalidRequestError(f"input format must be one of {', '.join(FORMATS)}, got {format!r}",
                                      param="input_format")
        if format == "parquet" and path == "-":
            raise InvalidRequestError("Parquet input needs a file, not stdin", param="input")
        if path != "-" and not Path(path).is_file():
            raise InvalidRequestError(f"cannot read input {path!r}: no such file", param="input")
        return cls(path, format, text_field, id_field)

    def identity(self) -> dict[str, Any]:
        """What a resumed job checks is the same input: the path, its size and modification time."""
        if self.path == "-":
            return {"path": "-"}
        stat = Path(self.path).stat()
        return {"path": str(Path(self.path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    def count(self) -> int | None:
        """The number of rows (for the progress bar's ETA), cheaply: Parquet's metadata, or the
        file's newlines (blank lines included, so it may overcount); None for stdin."""
        if self.path == "-":
            return None
        if self.format == "parquet":
            return pyarrow_parquet().ParquetFile(self.path).metadata.num_rows
        lines, last = 0, b"\n"
        with open(self.path, "rb") as f:
            while block := f.read(1 << 20):
                lines += block.count(b"\n")
                last = block[-1:]
        return lines + (last != b"\n")


def read_rows(spec: InputSpec, skip: int = 0) -> Iterator[tuple[Any, str]]:
    """(id, text) for every row after the first `skip` rows."""
    rows = _parquet_rows(spec) if spec.format == "parquet" else _line_rows(spec)
    for _ in range(skip):
        if next(rows, None) is None:
            return
    yield from rows


def _line_rows(spec: InputSpec) -> Iterator[tuple[Any, str]]:
    if spec.path == "-":
        stream: io.TextIOBase = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="strict")
    else:
        stream = open(spec.path, encoding="utf-8")
    name = "stdin" if spec.path == "-" else spec.path
    try:
        for number, line in enumerate(stream):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if spec.format == "jsonl" or line.lstrip().startswith("{"):
                yield _record(line, number, name, spec)
            else:
                yield number, line
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})", param="input") from None
    finally:
        if stream is not sys.stdin:
            stream.close()


def _record(line: str, number: int, name: str, spec: InputSpec) -> tuple[Any, str]:
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise InvalidRequestError(f"{name}:{number + 1}: invalid JSON: {exc}", param="input") from None
    if not isinstance(record, dict):
        raise InvalidRequestError(f"{name}:{number + 1}: a JSON line must be an object", param="input")
    text = record.get(spec.text_field, record.get("input") if spec.text_field == "text" else None)
    if not isinstance(text, str):
        raise InvalidRequestError(f"{name}:{number + 1}: JSON line needs a string {spec.text_field!r} field",
                                  param="input")
    return record.get(spec.id_field, number), text


def _parquet_rows(spec: InputSpec) -> Iterator[tuple[Any, str]]:
    pq = pyarrow_parquet()
    file = pq.ParquetFile(spec.path)
    names = file.schema_arrow.names
    if spec.text_field not in names:
        raise InvalidRequestError(f"{spec.path}: no column {spec.text_field!r} (columns: {', '.join(names)}); "
                                  "choose one with --text-field", param="text_field")
    columns = [spec.text_field] + ([spec.id_field] if spec.id_field in names else [])
    number = 0
    for batch in file.iter_batches(batch_size=4096, columns=columns):
        texts = batch.column(spec.text_field).to_pylist()
        ids = batch.column(spec.id_field).to_pylist() if len(columns) == 2 else range(number, number + len(texts))
        for row_id, text in zip(ids, texts):
            if not isinstance(text, str):
                raise InvalidRequestError(f"{spec.path}: row {number} has no text ({text!r})", param="input")
            number += 1
            yield row_id, text


def pyarrow_parquet(param: str = "input") -> Any:
    """pyarrow.parquet, or an error naming `param` (pyarrow is optional: 'ember[ray]' has it)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InvalidRequestError("Parquet needs pyarrow: pip install pyarrow (or 'ember[ray]')",
                                  param=param) from None
    return pq
