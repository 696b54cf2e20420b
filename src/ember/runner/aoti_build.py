"""How the AOTInductor build is kept short: a cold start on 2 cores is mostly this build.

Measured on the 2-core Xeon with all-MiniLM-L6-v2, from a fresh machine (empty inductor cache
and /tmp), process launch to LLM() ready: 36.4 s with inductor's defaults, 19.5 s with all of
this (bench/results/2026-11-27-1a9a8b8-xeon-vnni/history.md, "First call and startup"). Each piece, in the order it pays:

- no precompiled headers built (-7 s fresh): building them pays off only over many compiles. Where
  they exist (build_precompiled_headers() made them, as the test suite does), they are used: on a
  Zen 3 the kernels' compile took 1.2 s instead of 4.7 and the wrapper's 5.5 s instead of 8.0;
- trust /proc/cpuinfo for the vector ISA (-5 s): inductor otherwise compiles and dlopens one
  probe per ISA; if the compiler then rejects the ISA the build is retried with the probes;
- the small feature probes that remain (bf16, VNNI) run beside torch.export (-1 s);
- the wrapper is compiled at -O0 (-0.8 s; it only calls kernels, the single-text forward
  stayed within noise) and beside the kernels' -O3 compile instead of before it (-2 s);
- no line tables (-g1, for sampling profilers; debug information does not change the code):
  the wrapper's compile, the longest step after the lowering, 7.2 -> 5.7 s on a Zen 4;
- no weights inside the shared object (-1 s, and 90 MB less memory): see aot_package.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch._inductor.config as inductor_config

logger = logging.getLogger(__name__)

AOTI_SETTINGS: dict[str, object] = {
    "freezing": False,  # weights stay inputs of the graph (no measured speed difference)
    "aot_inductor.package_constants_in_so": False,
    "aot_inductor.precompile_headers": False,
    "aot_inductor.compile_wrapper_opt_level": "O0",
    "aot_inductor.enable_line_tables": False,
    "cpp.vec_isa_ok": True,
}


def build_fast(compile_package: Callable[[object, dict[str, object]], None], export: Callable[[], object]) -> None:
    """Export (with the ISA probes beside it), then build with AOTI_SETTINGS; if the compiler
    rejects the CPU's vector ISA, build again the way inductor does by default."""
    settings = {**AOTI_SETTINGS, "aot_inductor.precompile_headers": _precompiled_headers_exist()}
    with inductor_config.patch(settings):
        probe = threading.Thread(target=_check_isa, name="ember-isa-probe", daemon=True)
        probe.start()
        program = export()
        probe.join()
        try:
            with _wrapper_compiled_beside_kernels(), _missing_headers_not_built():
                compile_package(program, settings)
            return
        except Exception as exc:
            logger.warning("AOT compile with the CPU's vector ISA failed (%s); retrying with ISA probes", exc)
    _forget_isa_checks()
    with _missing_headers_not_built():
        compile_package(program, {**settings, "cpp.vec_isa_ok": None})


def build_precompiled_headers() -> None:
    """Build inductor's precompiled headers of the AOT wrapper and of the kernels' preamble (two
    compiles of ~8 s side by side, once per machine, compiler and torch), by compiling a
    one-linear graph with the settings Ember's builds use. Every later build in any process then
    finds them (build_fast), which pays off where a machine compiles many graphs: the test suite
    calls this first."""
    from torch._inductor import aoti_compile_and_package

    settings = {**AOTI_SETTINGS, "aot_inductor.precompile_headers": True}
    program = torch.export.export(torch.nn.Linear(8, 8), (torch.ones(2, 8),))
    with tempfile.TemporaryDirectory(prefix="ember-headers-") as scratch, inductor_config.patch(settings), \
            _headers_built_side_by_side():
        aoti_compile_and_package(program, package_path=str(Path(scratch) / "headers.pt2"), inductor_configs=settings)


def _precompiled_headers_exist() -> bool:
    """Whether inductor's header folder holds any precompiled header. If not, a build does not
    even look for one (looking preprocesses each header: ~0.4 s each)."""
    from torch._inductor import codecache

    folder = Path(getattr(codecache, "_HEADER_DIR", ""))
    return folder.is_dir() and any(folder.glob("*.h.[gp]ch"))


@contextlib.contextmanager
def _missing_headers_not_built() -> Iterator[None]:
    """Inductor builds a missing precompiled header right before the compile that wants it (~8 s
    each, one after the other): here a missing one is not built, and the compile includes the
    header itself."""
    def look_only(compile_headers: Callable[..., None], lock_path: str, builders: list) -> None:
        for header in builders:
            target = header.get_target_file_path()
            logger.debug("precompiled header %s: %s", target, "used" if os.path.exists(target) else "missing, not built")
    with _header_compile_replaced(look_only):
        yield


@contextlib.contextmanager
def _headers_built_side_by_side() -> Iterator[None]:
    """The headers inductor asks for are built in threads, and every compile that is not a
    header's (preprocessing or precompiling one) waits for them."""
    pending: list[tuple[threading.Thread, list[BaseException]]] = []

    def wait_for_headers() -> None:
        while pending:
            thread, errors = pending.pop()
            thread.join()
            if errors:
                raise errors[0]

    def in_a_thread(compile_headers: Callable[..., None], lock_path: str, builders: list) -> None:
        errors: list[BaseException] = []

        def run() -> None:
            try:
                compile_headers(lock_path, builders)
            except BaseException as exc:
                errors.append(exc)
        thread = threading.Thread(target=run, name="ember-header", daemon=True)
        thread.start()
        pending.append((thread, errors))

    def before_build(builder: object) -> None:
        if not (getattr(builder, "_precompiling", False) or getattr(builder, "_preprocessing", False)):
            wait_for_headers()
    try:
        with _header_compile_replaced(in_a_thread, before_build):
            yield
            wait_for_headers()
    finally:
        for thread, _ in pending:
            thread.join()


@contextlib.contextmanager
def _header_compile_replaced(compile_headers: Callable[..., None],
                             before_build: Callable[[object], None] | None = None) -> Iterator[None]:
    """Inductor's header compile (codecache._worker_compile_cpp) replaced by
    `compile_headers(original, lock_path, builders)`, and `before_build(builder)` run before every
    CppBuilder.build (if given). Inductor internals, pinned by torch==2.13.0: if they are not as expected,
    nothing is changed. Inductor remembers per process which header it answered: forgotten on
    both sides, so that a later build (say, one that builds them) is not skipped."""
    from torch._inductor import codecache, cpp_builder

    original = getattr(codecache, "_worker_compile_cpp", None)
    remembered = getattr(codecache, "_precompile_header", None)
    builder = getattr(cpp_builder, "CppBuilder", None)
    original_build = getattr(builder, "build", None)
    if original is None or original_build is None or not hasattr(remembered, "cache_clear"):
        yield
        return

    def build(self: object) -> None:
        before_build(self)  # type: ignore[misc]
        return original_build(self)

    remembered.cache_clear()
    codecache._worker_compile_cpp = lambda lock_path, builders: compile_headers(original, lock_path, builders)
    if before_build is not None:
        builder.build = build
    try:
        yield
    finally:
        codecache._worker_compile_cpp = original
        builder.build = original_build
        remembered.cache_clear()


def _check_isa() -> None:
    from torch._inductor import cpu_vec_isa

    with inductor_config.patch(AOTI_SETTINGS):  # inductor's config patches are per thread
        cpu_vec_isa.valid_vec_isa_list()


def _forget_isa_checks() -> None:
    """Drop inductor's cached ISA answers so that the next build probes the compiler."""
    from torch._inductor import cpu_vec_isa

    cpu_vec_isa.valid_vec_isa_list.cache_clear()
    for isa in cpu_vec_isa.supported_vec_isa_list:
        for method in vars(type(isa)).values():
            if hasattr(method, "cache_clear"):
                method.cache_clear()
    method = getattr(cpu_vec_isa.VecISA, "_VecISA__bool__impl", None)
    if hasattr(method, "cache_clear"):
        method.cache_clear()


@contextlib.contextmanager
def _wrapper_compiled_beside_kernels() -> Iterator[None]:
    """AOTI compiles the wrapper, then the kernels, then links. Start the wrapper's compile in a
    thread and let the kernels' compile run meanwhile; the link (the next build that is not
    compile-only) waits for it. Inductor internals, pinned by torch==2.13.0: if they are not
    as expected, nothing is changed."""
    from torch._inductor import cpp_builder

    builder = getattr(cpp_builder, "CppBuilder", None)
    original = getattr(builder, "build", None)
    if original is None:
        yield
        return
    pending: list[tuple[threading.Thread, list[BaseException]]] = []

    def wait_for_pending() -> None:
        while pending:
            thread, errors = pending.pop()
            thread.join()
            if errors:
                raise errors[0]

    def build(self: object) -> None:
        if not getattr(self, "_compile_only", False):
            wait_for_pending()  # a link needs every object file
            return original(self)
        if not str(getattr(self, "_name", "")).endswith(".wrapper"):
            return original(self)
        errors: list[BaseException] = []

        def compile_wrapper() -> None:
            try:
                original(self)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=compile_wrapper, name="ember-aoti-wrapper", daemon=True)
        thread.start()
        pending.append((thread, errors))
        return None

    builder.build = build
    try:
        yield
        wait_for_pending()
    finally:
        for thread, _ in pending:
            thread.join()
        builder.build = original
