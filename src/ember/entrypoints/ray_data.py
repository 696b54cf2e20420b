"""Ray Data: embed a dataset's text column on a pool of Ember engines, one per actor.

    ds = ray.data.read_parquet("s3://corpus/")
    ember.ray.embed_dataset(ds, "sentence-transformers/all-MiniLM-L6-v2").write_parquet("s3://vectors/")

- Each actor builds its engine in its constructor, so it is compiled and warmed before Ray Data
  gives it a batch (Ember's ready guarantee, per actor).
- Threads: an actor runs as many intra-op threads as the CPUs Ray gave it (`cpus_per_actor`).
  Ray sets OMP_NUM_THREADS=1 in its workers, and Ember's own default (the machine's physical
  cores) would oversubscribe a node that holds several actors; neither is what the user asked.
- The compile cache: before the pool starts, one task fills the node's compile cache (the same
  folder the actors read), so every actor after it loads the compiled model instead of compiling
  it again. On several nodes, point `compile_cache_dir` at shared storage to compile once in all.
- Exactly once: Ray Data restarts an actor that dies and runs its unfinished batches again; a
  batch's output exists only once it returned, so each input row appears once in the output.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from ember.config import EngineConfig
from ember.errors import InvalidRequestError

logger = logging.getLogger(__name__)


def _ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise InvalidRequestError("Ray is not installed: pip install 'ember[ray]'", param="ray") from None
    return ray


def actor_config(config: EngineConfig, cpus: float) -> EngineConfig:
    """The config an actor given `cpus` CPUs runs: that many threads, unless threads were set."""
    if config.device_config.threads is not None:
        return config
    threads = max(1, int(cpus))
    return dataclasses.replace(config, device_config=dataclasses.replace(config.device_config, threads=threads))


def _assigned_cpus(default: float) -> float:
    import ray

    return ray.get_runtime_context().get_assigned_resources().get("CPU", default)


class EmbedBatches:
    """The callable class Ray Data runs on each actor: texts of a batch in, vectors added to it."""

    def __init__(self, config: EngineConfig, text_column: str, output_column: str, truncate: bool,
                 cpus_per_actor: float) -> None:
        from ember.entrypoints.llm import LLM

        self.config = actor_config(config, _assigned_cpus(cpus_per_actor))
        self.llm = LLM.from_config(self.config)  # compiled and warmed before the first batch
        self.text_column, self.output_column = text_column, output_column
        self.truncate = -1 if truncate else None
        logger.info("ember actor ready: %s, %d threads", self.config.model_config.model, self.llm.stats()["threads"])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.text_column not in batch:
            raise InvalidRequestError(f"the dataset has no column {self.text_column!r} (columns: "
                                      f"{', '.join(batch)}); pass text_column=", param="text_column")
        texts = [str(t) for t in batch[self.text_column]]
        outputs = self.llm.embed(texts, truncate_prompt_tokens=self.truncate)
        batch[self.output_column] = np.stack([o.outputs.data for o in outputs]).astype(np.float32, copy=False)
        return batch


def _fill_compile_cache(config: EngineConfig, cpus: float) -> dict[str, Any]:
    """Build the engine once, so that the compiled model is in the cache the actors read."""
    from ember.entrypoints.llm import LLM

    llm = LLM.from_config(actor_config(config, _assigned_cpus(cpus)))
    return {"startup_s": llm.stats()["startup_s"], "compilation_time_s": llm.stats()["compilation_time_s"]}


def embed_dataset(ds: Any, model: str | EngineConfig | None = None, *, text_column: str = "text", output_column: str = "embedding",
                  num_actors: int | tuple[int, int] = 1, cpus_per_actor: float = 1, batch_size: int = 1024,
                  truncate: bool = False, fill_compile_cache: bool = True, **engine_kwargs: Any) -> Any:
    """`ds` with an `output_column` of float32 vectors, one per row, every other column kept.

    Args:
        ds: a ray.data.Dataset with a string column `text_column`.
        model: a model folder or installed name (on every node), or a whole EngineConfig.
        num_actors: the pool size, or (min, max) for an autoscaling pool.
        cpus_per_actor: CPUs Ray reserves for each actor; its engine runs that many threads.
        batch_size: rows per batch handed to an actor (the engine batches them again by tokens).
        truncate: cut over-long texts to the model's length instead of failing the job.
        fill_compile_cache: compile once in a task before the pool starts (see the module docstring).
        **engine_kwargs: any EngineConfig field (dtype, max_model_len, compile_cache_dir, ...).
    """
    ray = _ray()
    # A bad argument fails here, in the driver, not in every actor.
    config = model if isinstance(model, EngineConfig) else EngineConfig.from_kwargs(model, **engine_kwargs)
    if isinstance(num_actors, int):
        pool = ray.data.ActorPoolStrategy(size=num_actors)
    else:
        pool = ray.data.ActorPoolStrategy(min_size=num_actors[0], max_size=num_actors[1])
    if fill_compile_cache and not config.compile_config.enforce_eager:
        task = ray.remote(_fill_compile_cache).options(num_cpus=cpus_per_actor)
        logger.info("filling the compile cache: %s", ray.get(task.remote(config, cpus_per_actor)))
    return ds.map_batches(
        EmbedBatches, fn_constructor_kwargs={"config": config, "text_column": text_column, "output_column":
                                             output_column, "truncate": truncate, "cpus_per_actor": cpus_per_actor},
        batch_size=batch_size, batch_format="numpy", compute=pool, num_cpus=cpus_per_actor,
        udf_modifying_row_count=False)


def embed_files(source: str, target: str, config: EngineConfig, *, input_format: str | None, output_format: str | None,
                text_field: str, id_field: str, include_text: bool, truncate: bool, num_actors: int | None,
                cpus_per_actor: float, address: str | None) -> int:
    """`ember embed --ray`: a JSONL or Parquet corpus (files, a folder, any path Ray reads) to a
    folder of Parquet or JSONL files with the id, the vector and optionally the text. Returns
    the rows written."""
    ray = _ray()
    suffix = source.rstrip("/").rsplit(".", 1)[-1].lower()
    input_format = input_format or ("parquet" if suffix == "parquet" else "jsonl")
    ending = target.rstrip("/").rsplit(".", 1)[-1].lower()
    output_format = output_format or {"jsonl": "jsonl", "json": "jsonl", "npy": "npy"}.get(ending, "parquet")
    if input_format == "text" or output_format == "npy":
        raise InvalidRequestError("ember embed --ray reads JSONL or Parquet (rows with an id field) and writes "
                                  "Parquet or JSONL folders; plain text and npy have no ids to keep rows apart",
                                  param="input_format" if input_format == "text" else "output_format")
    if not ray.is_initialized():
        ray.init(address=address)
    ds = ray.data.read_parquet(source) if input_format == "parquet" else ray.data.read_json(source, lines=True)
    columns = ds.columns()
    for field, flag in ((text_field, "--text-field"), (id_field, "--id-field")):
        if field not in columns:
            raise InvalidRequestError(f"{source} has no field {field!r} (fields: {', '.join(columns)}); choose it "
                                      f"with {flag}", param=flag.removeprefix("--").replace("-", "_"))
    if num_actors is None:
        num_actors = max(1, int(ray.cluster_resources().get("CPU", 1) // cpus_per_actor))
    out = embed_dataset(ds.select_columns([id_field, text_field]), config, text_column=text_field,
                        num_actors=num_actors, cpus_per_actor=cpus_per_actor, truncate=truncate)
    if not include_text:
        out = out.drop_columns([text_field])
    if output_format == "parquet":
        out.write_parquet(target)
    else:
        out.write_json(target)
    return ray.data.read_parquet(target).count() if output_format == "parquet" else ray.data.read_json(target).count()
