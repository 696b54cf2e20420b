"""Ember on a local Ray cluster started here (2 CPUs, loopback): Ray Data batch embedding with
an actor pool, and a Ray Serve deployment, both against the single-process LLM's vectors."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray  # the README's test command installs 'ember[ray]'

from ember import LLM
from ember.entrypoints.ray_data import EmbedBatches
from ember.ray import deployment, embed_dataset

WORDS = "the quick brown fox jumps over a lazy dog while hello world says good morning".split()


def corpus(n: int) -> list[str]:
    return [" ".join(WORDS[(i * 5 + k) % len(WORDS)] for k in range(1 + i % 11)) for i in range(n)]


@pytest.fixture(scope="module")
def cluster():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a loopback-only test cluster
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(tiny_bert):
    llm = LLM(str(tiny_bert), dtype="float32", enforce_eager=True)
    return lambda texts: np.stack([o.outputs.data for o in llm.embed(texts)])


def test_ray_data_equals_llm_embed_row_for_row(cluster, tiny_bert, reference):
    """Two compiled actors (the compile cache filled once first): the same ids, each once, and
    the single-process vectors."""
    texts = corpus(1500)
    ds = ray.data.from_items([{"id": f"doc-{i}", "text": t} for i, t in enumerate(texts)])
    rows = embed_dataset(ds, str(tiny_bert), dtype="float32", num_actors=2, batch_size=100).take_all()
    assert sorted(r["id"] for r in rows) == sorted(f"doc-{i}" for i in range(1500))
    by_id = {r["id"]: r for r in rows}
    got = np.stack([by_id[f"doc-{i}"]["embedding"] for i in range(1500)])
    assert got.dtype == np.float32 and [by_id[f"doc-{i}"]["text"] for i in range(3)] == texts[:3]
    cosine = np.sum(got * reference(texts), axis=1)  # both normalized
    assert cosine.min() >= 0.9999


def test_an_actor_runs_the_threads_of_its_cpus(cluster, tiny_bert):
    """Ray gives a worker OMP_NUM_THREADS=1 unless told its CPUs, and Ember's own default is the
    machine's cores: an actor runs exactly the CPUs it reserved."""
    from ember.config import EngineConfig

    config = EngineConfig.from_kwargs(str(tiny_bert), dtype="float32", enforce_eager=True)

    @ray.remote
    def threads_of_an_actor():
        import torch

        actor = EmbedBatches(config, "text", "embedding", False, 1)
        return actor.llm.stats()["threads"], torch.get_num_threads()

    assert ray.get(threads_of_an_actor.options(num_cpus=2).remote()) == (2, 2)
    assert ray.get(threads_of_an_actor.options(num_cpus=1).remote()) == (1, 1)


def _actor_pids() -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if b"EmbedBatches" in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def test_a_killed_actor_has_its_batches_redone_exactly_once(cluster, tiny_bert, reference):
    """SIGKILL one of the two actors once the first rows came out: Ray Data restarts it and runs
    its batches again; every input id is in the output exactly once, with its own vector."""
    texts = corpus(20000)
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)], override_num_blocks=400)
    out = embed_dataset(ds, str(tiny_bert), dtype="float32", num_actors=2, batch_size=100)
    seen: list[int] = []
    vectors: dict[int, np.ndarray] = {}
    killed: list[int] = []
    restarted = False
    for batch in out.iter_batches(batch_size=100, batch_format="numpy"):
        if not killed:
            first = _actor_pids()
            assert len(first) == 2, first
            os.kill(first[0], signal.SIGKILL)
            killed.append(first[0])
        elif not restarted:
            restarted = bool(set(_actor_pids()) - set(first))  # the job was still running: a new actor
        for row_id, vector in zip(batch["id"].tolist(), batch["embedding"]):
            seen.append(row_id)
            vectors[row_id] = vector
    assert killed and killed[0] not in _actor_pids() and restarted
    assert len(seen) == 20000 and sorted(seen) == list(range(20000))
    sample = list(range(0, 20000, 97))
    got = np.stack([vectors[i] for i in sample])
    assert np.sum(got * reference([texts[i] for i in sample]), axis=1).min() >= 0.9999


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_only_when_warm_with_the_openai_client(cluster, tiny_bert, reference):
    """serve.run returns once the replica is running, which it is only once warm: the first
    /health is 200 (Ember says 503 while warming), the first embeddings request is answered
    with the single-process vectors, and nothing compiled after ready."""
    import httpx
    import openai
    from ray import serve

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(deployment(str(tiny_bert), dtype="float32"), name="ember", route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/health").status_code == 200
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused")
        texts = corpus(40)
        results: list = [None] * 4

        def embed(k: int) -> None:
            results[k] = client.embeddings.create(model=str(tiny_bert), input=texts[k * 10:(k + 1) * 10])

        threads = [threading.Thread(target=embed, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got = np.array([d.embedding for r in results for d in r.data], dtype=np.float32)
        assert np.sum(got * reference(texts), axis=1).min() >= 0.9999
        metrics = httpx.get(f"{base}/metrics").text
        assert "ember_compiles_after_ready_total 0.0" in metrics
        bad = httpx.post(f"{base}/v1/embeddings", json={"input": 3})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "input"
    finally:
        serve.shutdown()
        time.sleep(0.5)


def test_ember_embed_on_ray_from_the_command_line(cluster, tiny_bert, reference, tmp_path):
    """`ember embed --ray` joins the running cluster: JSONL with ids in, a Parquet folder out."""
    import json
    import subprocess
    import sys

    import pyarrow.dataset

    texts = corpus(500)
    source = tmp_path / "corpus.jsonl"
    source.write_text("".join(json.dumps({"key": f"k{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    address = ray.get_runtime_context().gcs_address
    result = subprocess.run(
        [sys.executable, "-m", "ember.entrypoints.cli", "embed", str(tiny_bert), "--dtype", "float32", "--ray",
         "--ray-address", address, "--ray-actors", "1", "--id-field", "key", "-i", str(source),
         "-o", str(tmp_path / "vectors")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "500 rows" in result.stderr
    table = pyarrow.dataset.dataset(tmp_path / "vectors", format="parquet").to_table()
    assert sorted(table.column_names) == ["embedding", "key"]
    by_key = dict(zip(table.column("key").to_pylist(), table.column("embedding").to_numpy(zero_copy_only=False)))
    assert sorted(by_key) == sorted(f"k{i}" for i in range(500))
    got = np.stack([np.asarray(by_key[f"k{i}"], dtype=np.float32) for i in range(500)])
    assert np.sum(got * reference(texts), axis=1).min() >= 0.9999
    bad = subprocess.run([sys.executable, "-m", "ember.entrypoints.cli", "embed", str(tiny_bert), "--ray", "-i",
                          str(source), "-o", str(tmp_path / "v.npy")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "plain text and npy have no ids" in bad.stderr
