"""Ahead-of-time compiled encoder graphs: torch.export + AOTInductor, cached on disk.

The encoder is exported once with dynamic (batch, seq) dimensions over the whole shape plan
and compiled by AOTInductor into a .pt2 package. With `compile_scope="layer"`, when the layers
all have one structure (BERT and RoBERTa, float or int8), only one layer is compiled, and the
package runs once per layer, each time with that layer's weights; the embeddings run eagerly
before it. The build's cost is mostly per graph, not per layer: on MiniLM (6 layers) this takes
the build from 12.9 to 9.0 s (float32) and from 23.4 to 11.1 s (int8). The price, measured on
one 9-token text: 2.55-2.68 ms instead of 2.33-2.35 (eager embeddings, and ~40 us more per layer
call inside AOTInductor's run, not in Python: handing one call's output handle straight to the
next saved nothing); batches of 32 within 1-4%. So the whole model stays the default.
A package holds no Python-level compiler:
calling it can never trigger a compile, so "zero compiles after ready" holds by construction,
and a warm restart loads the package in well under a second.

The package holds code only, no weights: at load (aoti_runner.py, which also keeps the GIL free
while the model runs), the model's own parameters are handed to it as user-managed constants, so the weights exist once in memory and the package is a few MB.
Leaving the weights out also keeps the build short (no 90 MB data section to write and link);
aoti_build.py has the rest of what keeps it short.

Packages are keyed by everything that changes the generated code: the model's files, dtype,
quantization, shape plan, CPU features, torch and Ember versions, and a digest of the model code.
A corrupt or unreadable package is ignored with a warning and rebuilt, and so is one whose
constants do not match the model's tensors in dtype or size (aoti_runner.py checks).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ember import kernels as ember_kernels
from ember.runner.aoti_runner import AOTIRunner, load_shared_object
from ember.runner.compile import EXPORT_MIN_DIM, ShapePlan
from ember.runner.device import cpu_flags
from ember.runner.opaque_weights import placeholders

logger = logging.getLogger(__name__)

_ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "avx512_fp16")


@dataclass(frozen=True, slots=True)
class CompiledGraph:
    run: Callable[..., torch.Tensor]
    compile_s: float
    """Seconds spent exporting and compiling (0 when loaded from the cache)."""
    load_s: float
    from_cache: bool
    path: Path | None


def graph_code_digest(root: Path | None = None) -> str:
    """Digest of the code that defines the exported graph and its build (the model classes, Ember's
    kernels, the int8 package and its frozen calibration texts, the packed float linears and the
    opaque weights' placeholders, the build settings): a package or int8 layers built by other code
    or calibrated on other texts are never reused, whatever the version number says."""
    root = root or Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    int8 = root / "runner" / "int8"
    kernels = [p for p in (root / "kernels").iterdir() if p.suffix in (".py", ".cpp", ".h")]  # the C++ sets packed layouts
    for source in sorted([*(root / "model").rglob("*.py"), *kernels, *int8.rglob("*.py"),
                          *int8.glob("*.json"), root / "runner" / "aoti_build.py", root / "runner" / "packed_linear.py",
                          root / "runner" / "opaque_weights.py"]):
        digest.update(f"{source.relative_to(root)}\0".encode() + source.read_bytes())
    return digest.hexdigest()[:16]


def package_key(model_files: list[Path], dtype: torch.dtype, plan: ShapePlan, architecture: str,
                quantization: str | None = None, *, per_thread_count: bool = True, kernels: str = "") -> str:
    """The cache key of what is built from these model files. per_thread_count=False for what
    does not depend on the thread count (the calibrated int8 layers), so that a process with
    other threads (a 1-CPU Ray actor beside a 2-thread server) reuses it. kernels: which of
    Ember's kernels the graph calls (ember.kernels.mode(...)), for a compiled graph."""
    from ember import __version__

    digest = hashlib.sha256()
    # The kernels are built for the intra-op thread count (inductor writes it into them).
    threads = f"threads={torch.get_num_threads()}" if per_thread_count else "threads=any"
    for part in ("weights-outside", __version__, graph_code_digest(), torch.__version__, str(dtype), architecture,
                 threads, f"kernels={kernels}",
                 plan.max_batch, plan.max_seq, EXPORT_MIN_DIM, f"quantization={quantization}",
                 ",".join(f for f in _ISA_FLAGS if f in cpu_flags())):
        digest.update(f"{part}\0".encode())
    for file in sorted(model_files):
        stat = file.stat()
        digest.update(f"{file.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        if file.name == "config.json":
            digest.update(file.read_bytes())
    return digest.hexdigest()[:24]


def layer_stack(model: torch.nn.Module) -> list[torch.nn.Module] | None:
    """The model's layers if one compiled graph can serve them all: the model has `embed` (what
    the layers take) and its layers have the same tensors (names, shapes, dtypes). Else None."""
    layers = getattr(model, "layers", None)
    if not hasattr(model, "embed") or not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        return None

    def structure(layer: torch.nn.Module) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        tensors = {**dict(layer.named_parameters()), **dict(layer.named_buffers())}
        return [(name, tuple(t.shape), t.dtype) for name, t in sorted(tensors.items())]

    first = structure(layers[0])
    return list(layers) if all(structure(layer) == first for layer in layers[1:]) else None


def load_or_compile(
    model: torch.nn.Module, plan: ShapePlan, cache_dir: Path | None, key: str, pad_id: int, per_layer: bool = False,
    template: torch.nn.Module | None = None, meanwhile: Callable[[], None] | None = None,
    graph_constants: Mapping[str, torch.Tensor] | None = None,
) -> CompiledGraph:
    """The compiled encoder for `plan`, from `cache_dir` when present, else built (and stored).
    per_layer: compile one layer (run once per layer) if the layers allow it, else the model.
    template, meanwhile: `model` is not final yet; `meanwhile` (run in this thread) makes it final,
    and `template` already has its final structure (the same tensor names, shapes and dtypes). The
    package is then built from the template in a child process while `meanwhile` runs, and
    loaded with the model's own tensors once both are done (the package holds no weights).
    graph_constants: tensors the compiler adds to the graph by itself (int8/kernel.py), by name."""
    source = template if template is not None else model
    layers = layer_stack(source) if per_layer else None
    if per_layer and layers is None:
        logger.info("the model's layers differ in structure: compiling the whole model")
    key = f"{'layer' if layers else 'model'}-{key}"
    pending = [meanwhile] if meanwhile is not None else []

    def finish_model() -> None:
        while pending:
            pending.pop()()
    if cache_dir is not None:
        path = cache_dir / f"encoder-{key}.pt2"
        if path.is_file():
            finish_model()
            start = time.perf_counter()
            try:
                run = _load(path, model, per_layer=layers is not None, constants=graph_constants)
                return CompiledGraph(run, 0.0, time.perf_counter() - start, True, path)
            except Exception as exc:
                logger.warning("ignoring unreadable compile cache entry %s (%s); recompiling", path, exc)
    with tempfile.TemporaryDirectory(prefix="ember-aoti-") as scratch:
        target = Path(scratch) / "encoder.pt2"
        build_s = _build_beside(lambda: _export_and_compile(source, layers, plan, target, pad_id),
                                finish_model if pending else None)
        stored = cache_dir is not None and _store(target, cache_dir / f"encoder-{key}.pt2")
        if stored:
            target = cache_dir / f"encoder-{key}.pt2"
        load_start = time.perf_counter()
        run = _load(target, model, per_layer=layers is not None, constants=graph_constants)
        return CompiledGraph(run, build_s, time.perf_counter() - load_start, False, target if stored else None)


def _store(built: Path, final: Path) -> bool:
    """Copy the package into the cache under a scratch name, then rename it (atomic: a concurrent
    reader sees all or nothing; a copy, because the cache may be on another filesystem). A cache
    that cannot be written (full disk, read-only, not a folder) costs the next start a compile,
    nothing more: False, with a warning."""
    scratch = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built, scratch)
        os.replace(scratch, final)
        return True
    except OSError as exc:
        logger.warning("could not store the compiled graph in %s (%s): serving without caching it; the next "
                       "start compiles again", final.parent, exc)
        with contextlib.suppress(OSError):
            scratch.unlink()
        return False


def _build_beside(build: Callable[[], None], meanwhile: Callable[[], None] | None) -> float:
    """Run `build` in a forked child process while `meanwhile` runs in this one (without
    `meanwhile`, just run it); returns the build's seconds. Both finish before this returns, and a
    failure of either is raised here.

    A process, not a thread: the build is mostly Python (export, inductor's lowering) and holds
    the GIL for long stretches, and `meanwhile` (int8 calibration, thousands of small torch ops)
    needs the GIL back after every op: beside a Python-busy thread, calibration took 102 s
    instead of 4.8. The child starts with everything already imported and the template in its
    memory (fork), runs one intra-op thread (the parent's OpenMP threads do not exist in it),
    writes the package and leaves with os._exit. `meanwhile` runs on one thread fewer than the
    engine's, leaving a core to the build. MiniLM's first start on 2 cores (BENCHMARKS.md): 23.7 s
    one after the other; 18.3-19.0 s with the build in a thread; 16.6-16.7 s like this."""
    if meanwhile is None or not hasattr(os, "fork"):  # no fork (not Linux/macOS): one after the other
        if meanwhile is not None:
            meanwhile()
        start = time.perf_counter()
        build()
        return time.perf_counter() - start
    threads = torch.get_num_threads()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_end)
        status, report = 1, "no report"
        try:
            _die_with_parent()
            torch.set_num_threads(1)
            # Inductor writes the thread count into the kernels (#pragma omp parallel num_threads):
            # build them for the engine's threads, not the child's one (a first version did not, and
            # its int8 kernels ran single-threaded: passages 66 -> 49.5 per second).
            from torch._inductor import config as inductor_config

            inductor_config.cpp.threads = threads
            start = time.perf_counter()
            build()
            status, report = 0, repr(time.perf_counter() - start)
        except BaseException as exc:
            report = f"{type(exc).__name__}: {exc}"
        finally:
            os.write(write_end, report.encode()[:60000])
            os._exit(status)
    os.close(write_end)
    torch.set_num_threads(max(1, threads - 1))
    try:
        meanwhile()
    except BaseException:
        os.kill(pid, signal.SIGKILL)  # its result is of no use now
        raise
    finally:
        torch.set_num_threads(threads)
        _, status = os.waitpid(pid, 0)
        with os.fdopen(read_end, "rb") as pipe:
            report = pipe.read().decode(errors="replace")
    if status != 0:
        raise RuntimeError(f"building the compiled graph failed (child process status {status}): {report}")
    return float(report)


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the thread that forked it ends (a server stopped while it
    starts must not leave a build running)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _export_and_compile(model: torch.nn.Module, layers: list[torch.nn.Module] | None, plan: ShapePlan, target: Path,
                        pad_id: int) -> None:
    # Imported here: a start that loads its package from the cache never needs the compiler
    # (torch._inductor and torch._dynamo take ~2 s to import).
    from torch._inductor import aoti_compile_and_package

    from ember.runner.aoti_build import build_fast

    # The bounds cover the example below even for a plan smaller than it.
    batch = torch.export.Dim("batch", min=EXPORT_MIN_DIM, max=max(plan.max_batch, 3))
    seq = torch.export.Dim("seq", min=EXPORT_MIN_DIM, max=max(plan.max_seq, 3))
    # Distinct example sizes so that export never ties batch and seq together.
    seq_max = max(plan.max_seq, 3)
    b, s = 3, (11 if seq_max >= 11 else (seq_max if seq_max != 3 else 2))
    example = (torch.full((b, s), pad_id, dtype=torch.int64), torch.ones(b, s, dtype=torch.int64))
    dynamic: tuple[dict[int, torch.export.Dim], ...] = ({0: batch, 1: seq}, {0: batch, 1: seq})
    graph = model
    if layers is not None:  # one layer, on what the embeddings give it
        graph = layers[0]
        with torch.no_grad():
            hidden, mask = model.embed(*example)
        example = (hidden, mask)
        # The mask is [batch, 1, 1, seq] (a key mask) or [batch, heads, seq, seq] (MPNet's bias folded in).
        dynamic = ({0: batch, 1: seq}, {0: batch, **{d: seq for d in range(1, mask.dim()) if mask.shape[d] == s}})

    def export() -> torch.export.ExportedProgram:
        with torch.inference_mode(False), torch.no_grad(), placeholders(model):
            program = torch.export.export(graph, example, dynamic_shapes=dynamic)
        if layers is not None:
            _refuse_inlined_weights(program, layers)
        return program

    def compile_package(program: torch.export.ExportedProgram, settings: dict[str, object]) -> None:
        # The graph calls Ember's own kernels through their C shims, not through the dispatcher.
        settings = {**settings, "aot_inductor.custom_ops_to_c_shims": ember_kernels.c_shims()}
        aoti_compile_and_package(program, package_path=str(target), inductor_configs=settings)

    build_fast(compile_package, export)


def _refuse_inlined_weights(program: torch.export.ExportedProgram, layers: list[torch.nn.Module]) -> None:
    """Inductor writes the values of 0-d and 1-d tensors of at most 8 values into the code as
    literals (GraphLowering.can_inline_constant). A per-layer package runs with every layer's own
    weights, so such a weight that differs between layers would silently take layer 0's values in
    all of them: refuse it (model code keeps them 2-d, like Int8Linear.outlier_columns, which a
    template build also needs: its values are placeholders). Constants of the code (lifted
    tensors) and weights equal in every layer (a RoPE table) are inlined correctly."""
    from torch.export.graph_signature import InputKind

    used = {node.name for node in program.graph.nodes if node.op == "placeholder" and node.users}
    kinds = (InputKind.PARAMETER, InputKind.BUFFER)
    per_layer = [_tensors(layer) for layer in layers]
    small = []
    for spec in program.graph_signature.input_specs:
        if spec.kind not in kinds or spec.arg.name not in used:
            continue
        values = [tensors.get(spec.target) for tensors in per_layer]
        first = values[0]
        if first is None or first.dim() > 1 or first.numel() > 8:
            continue
        if any(v is None or v.shape != first.shape or not torch.equal(v, first) for v in values[1:]):
            small.append(spec.target)
    if small:
        raise ValueError(f"the graph reads per-layer weights the compiler would inline as literals: {small[:3]} "
                         "(0-d or 1-d with at most 8 values); keep them 2-d")


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def _load(path: Path, model: torch.nn.Module, per_layer: bool,
          constants: Mapping[str, torch.Tensor] | None = None) -> Callable[..., torch.Tensor]:
    """Load the package and hand it the model's (or each layer's) weights (shared, not copied),
    with `constants` beside them."""
    extra = dict(constants or {})
    if not per_layer:
        whole = AOTIRunner(path, {**extra, **_tensors(model)})

        def run_whole(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
            assert token_type_ids is None, "the whole-model graph reads no segment ids (pair models compile per layer)"
            return whole(input_ids, attention_mask)
        return run_whole
    layers = layer_stack(model)
    if layers is None:
        raise ValueError("the package runs one layer, but the model's layers differ in structure")
    library = load_shared_object(path)
    runners = [AOTIRunner(path, {**extra, **_tensors(layer)}, library) for layer in layers]
    embed = model.embed

    def run(input_ids: torch.Tensor, attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        hidden, mask = embed(input_ids, attention_mask, token_type_ids)
        for layer in runners:
            hidden = layer(hidden, mask)
        return hidden
    return run
