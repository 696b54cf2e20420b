"""`ember embed` as a batch job: streamed by shards, ids carried through, every output format,
resumed after a kill -9 into a byte-identical output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ember import LLM
from ember.entrypoints.batch.job import JobConflictError, run_job
from ember.entrypoints.batch.rows import InputSpec
from ember.entrypoints.batch.sinks import open_sink
from ember.errors import InvalidRequestError

FLAGS = ("--enforce-eager", "--dtype", "float32")
WORDS = "the quick brown fox jumps over a lazy dog while hello world says good morning".split()


def corpus(n: int) -> list[str]:
    return [" ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(1 + i % 9)) for i in range(n)]


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"id": f"doc-{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


def ember(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ember.entrypoints.cli", "embed", *args], input=stdin,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def llm(tiny_bert) -> LLM:
    return LLM(str(tiny_bert), dtype="float32", enforce_eager=True)


def reference(llm: LLM, texts: list[str]) -> np.ndarray:
    return np.stack([o.outputs.data for o in llm.embed(texts)])


def embedder(llm: LLM, calls: list[int] | None = None, fail_on_call: int | None = None):
    def start():
        def embed(texts):
            if calls is not None:
                calls.append(len(texts))
                if fail_on_call is not None and len(calls) == fail_on_call:
                    raise RuntimeError("the machine went away")
            outs = llm.embed(texts)
            return np.stack([o.outputs.data for o in outs]), [o.num_prompt_tokens for o in outs]
        return embed
    return start


def test_resume_after_kill_9_gives_the_same_bytes(tiny_bert, tmp_path):
    """A job killed with SIGKILL mid-run and started again with the same command writes exactly
    the bytes of a run that was never interrupted, and runs only the shards it had not done."""
    source = write_jsonl(tmp_path / "in.jsonl", corpus(12000))
    args = ("-i", str(source), "--shard-size", "100", str(tiny_bert), *FLAGS)
    whole = ember(*args, "-o", str(tmp_path / "whole.jsonl"))
    assert whole.returncode == 0, whole.stderr
    target = tmp_path / "killed.jsonl"
    manifest = tmp_path / "killed.jsonl.ember-job.json"
    job = subprocess.Popen([sys.executable, "-m", "ember.entrypoints.cli", "embed", *args, "-o", str(target)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and job.poll() is None:
        if manifest.exists() and json.loads(manifest.read_text())["rows"] >= 500:
            break
        time.sleep(0.005)
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    state = json.loads(manifest.read_text())
    assert not state["complete"] and 500 <= state["rows"] < 12000, state
    resumed = ember(*args, "-o", str(target))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed after {state['rows']}" in resumed.stderr
    assert target.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["id"] for r in records] == [f"doc-{i}" for i in range(12000)]


def test_a_torn_shard_is_cut_back_and_redone(llm, tmp_path):
    """A crash during the third shard: the rerun drops the bytes written after the last
    committed shard (here: a half-written line) and embeds from there; nothing is duplicated."""
    texts = corpus(250)
    source = write_jsonl(tmp_path / "in.jsonl", texts)
    spec = InputSpec.of(str(source))
    target = tmp_path / "out.jsonl"
    calls: list[int] = []
    with pytest.raises(RuntimeError, match="went away"):
        run_job(spec, open_sink(str(target), None, False), embedder(llm, calls, fail_on_call=3),
                job={"m": 1}, shard_size=100)
    with open(target, "ab") as f:
        f.write(b'{"id":"doc-200","num_tok')
    calls.clear()
    result = run_job(spec, open_sink(str(target), None, False), embedder(llm, calls), job={"m": 1}, shard_size=100)
    assert calls == [50] and result.resumed_from == 200 and result.rows == 250
    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["id"] for r in records] == [f"doc-{i}" for i in range(250)]
    np.testing.assert_allclose(np.array([r["embedding"] for r in records]), reference(llm, texts), atol=1e-6)
    again = run_job(spec, open_sink(str(target), None, False), embedder(llm, calls), job={"m": 1}, shard_size=100)
    assert again.already_complete and calls == [50]


@pytest.mark.parametrize("output", ["parts-npy", "parts-parquet", "one.npy", "one.parquet", "one.jsonl"])
def test_every_output_format_holds_the_vectors_and_ids_in_input_order(llm, tmp_path, output):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = corpus(230)
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(230)], "body": texts}), source)
    spec = InputSpec.of(str(source), text_field="body", id_field="key")
    fmt = output.removeprefix("parts-") if output.startswith("parts-") else None
    path = str(tmp_path / output)
    calls: list[int] = []
    run_job(spec, open_sink(path, fmt, include_text=True), embedder(llm, calls), job={}, shard_size=100)
    assert calls == [100, 100, 30]
    if output == "parts-npy":
        vectors = np.concatenate([np.load(tmp_path / output / f"part-{i:05d}.npy") for i in range(3)])
        ids = [i for k in range(3) for i in json.loads((tmp_path / output / f"part-{k:05d}.ids.json").read_text())]
    elif output == "one.npy":
        vectors, ids = np.load(path), None
        assert not Path(path + ".parts").exists()
    elif output.endswith("parquet"):
        table = pq.read_table(path)
        assert table.column_names == ["id", "text", "num_tokens", "embedding"]
        assert table.column("text").to_pylist() == texts
        vectors = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
        ids = table.column("id").to_pylist()
    else:
        records = [json.loads(line) for line in Path(path).read_text().splitlines()]
        vectors, ids = np.array([r["embedding"] for r in records]), [r["id"] for r in records]
        assert [r["text"] for r in records] == texts
    np.testing.assert_allclose(vectors, reference(llm, texts), atol=1e-6)
    if ids is not None:
        assert ids == [f"k{i}" for i in range(230)]


def test_text_lines_get_their_line_numbers_as_ids(llm, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("quick brown fox\n\nlazy dog\n   \nhello world")
    target = tmp_path / "out.jsonl"
    run_job(InputSpec.of(str(source)), open_sink(str(target), None, False), embedder(llm), job={}, shard_size=2)
    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["id"] for r in records] == [0, 2, 4]
    np.testing.assert_allclose(np.array([r["embedding"] for r in records]),
                               reference(llm, ["quick brown fox", "lazy dog", "hello world"]), atol=1e-6)


def test_an_output_of_another_job_is_never_mixed_into(llm, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", corpus(20))
    target = tmp_path / "out.jsonl"
    spec = InputSpec.of(str(source))
    run_job(spec, open_sink(str(target), None, False), embedder(llm), job={"model": "a"}, shard_size=8)
    with pytest.raises(JobConflictError, match=r"job differs.*--overwrite"):
        run_job(spec, open_sink(str(target), None, False), embedder(llm), job={"model": "b"}, shard_size=8)
    with pytest.raises(JobConflictError, match="shard_size differs"):
        run_job(spec, open_sink(str(target), None, False), embedder(llm), job={"model": "a"}, shard_size=4)
    foreign = tmp_path / "mine.jsonl"
    foreign.write_text("precious\n")
    with pytest.raises(JobConflictError, match="not written by an ember embed job"):
        run_job(spec, open_sink(str(foreign), None, False), embedder(llm), job={}, shard_size=8)
    result = run_job(spec, open_sink(str(foreign), None, False), embedder(llm), job={}, shard_size=8, overwrite=True)
    assert result.rows == 20 and len(foreign.read_text().splitlines()) == 20


def test_bad_rows_are_named_by_id_or_line(llm, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": ' + '"' + "dog " * 200 + '"}\n')
    with pytest.raises(InvalidRequestError, match=r"row id='b': it has \d+ tokens"):
        run_job(InputSpec.of(str(source)), open_sink(str(tmp_path / "o.jsonl"), None, False), embedder(llm),
                job={}, shard_size=8)
    source.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": }\n')
    with pytest.raises(InvalidRequestError, match=r"in.jsonl:2: invalid JSON"):
        run_job(InputSpec.of(str(source)), open_sink(str(tmp_path / "p.jsonl"), None, False), embedder(llm),
                job={}, shard_size=8)
    with pytest.raises(InvalidRequestError, match="no column 'text'"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"body": ["x"]}), tmp_path / "in.parquet")
        run_job(InputSpec.of(str(tmp_path / "in.parquet")), open_sink(str(tmp_path / "q.jsonl"), None, False),
                embedder(llm), job={}, shard_size=8)


def test_cli_errors_exit_1_with_one_line(tiny_bert, tmp_path):
    for output in ("-", str(tmp_path / "empty.parquet")):  # an empty input is an error, in every format
        result = ember(str(tiny_bert), *FLAGS, "-o", output, stdin="\n  \n")
        assert result.returncode == 1 and result.stderr.strip().endswith("no rows in stdin (blank lines are skipped)")
    result = ember(str(tiny_bert), *FLAGS, "-o", "-", "--output-format", "npy", stdin="hello\n")
    assert result.returncode == 1 and result.stderr.strip().endswith("npy output needs a file or folder, not stdout")
    source = write_jsonl(tmp_path / "in.jsonl", corpus(5))
    assert ember(str(tiny_bert), *FLAGS, "-i", str(source), "-o", str(tmp_path / "o.jsonl")).returncode == 0
    result = ember(str(tiny_bert), *FLAGS, "--truncate", "-i", str(source), "-o", str(tmp_path / "o.jsonl"))
    assert result.returncode == 1 and "holds a different job" in result.stderr and "--overwrite" in result.stderr
    result = ember(str(tiny_bert), *FLAGS, "-i", str(source), "--shard-size", "0")
    assert result.returncode == 1 and "shard size must be at least 1" in result.stderr
