"""Ember's own C++ kernels: compiled once per machine with the C++ compiler AOTInductor uses,
cached beside the compiled graphs, and loaded into the process so that those graphs can call them.

One shared object per source file and vector width, built for the widest ISA torch runs here
(`torch.backends.cpu.get_cpu_capability()`, which honours ATEN_CPU_CAPABILITY, so a run held to
AVX2 gets the AVX2 build). The build a process's models use (ProcessKernel) is loaded with
RTLD_GLOBAL: an AOTInductor package that calls a kernel through its C shim leaves the symbol
undefined and finds it in the process at load. Any other build (a test of another CPU class's
build) is loaded with RTLD_LOCAL, so that its shim, of the same name, never answers those calls.
The cache key is the source with the headers beside it (common.h, attention's), the width and the torch
version (whose C shim the kernel calls, through function pointers bind_shim hands it at load): a
warm start loads the file without running the compiler.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import torch

logger = logging.getLogger(__name__)

SOURCES = Path(__file__).resolve().parent
BUILD_TIMEOUT_S = 120


@dataclass(frozen=True, slots=True)
class VectorIsa:
    name: str
    width: int
    """Floats per vector."""
    flags: tuple[str, ...]


AVX512 = VectorIsa("avx512", 16, ("-mavx512f", "-mavx2", "-mfma"))
AVX2 = VectorIsa("avx2", 8, ("-mavx2", "-mfma"))
AVX512_VNNI = VectorIsa("avx512-vnni", 16, (*AVX512.flags, "-mavx512bw", "-mavx512vnni"))
"""For a kernel of int8 dot products (int8_mm.cpp); built only where the CPU reports them."""
AVX512_BF16 = VectorIsa("avx512-bf16", 16, (*AVX512.flags, "-mavx512bw", "-mavx512bf16"))
"""AVX-512 with bf16 dot products (attention.cpp's bf16 variant); built only where the CPU reports them."""


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo), empty where they cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def vector_isa() -> VectorIsa | None:
    """The ISA to build for: what torch's own kernels run with here, None off x86 or below AVX2."""
    capability = torch.backends.cpu.get_cpu_capability()
    return {"AVX512": AVX512, "AVX2": AVX2}.get(capability)


K = TypeVar("K")


class ProcessKernel(Generic[K]):
    """The build of one kernel this process uses: loaded by prepare (None where it cannot be
    built here), then read by its op and by the model code that decides whether to call it. Per
    process, like torch's own backend switches."""

    def __init__(self, load: Callable[..., K | None]) -> None:
        """`load(isa, cache_dir, exported=...)`: the kernel module's load_kernel."""
        self._load = load
        self._preparing = threading.Lock()
        self.kernel: K | None = None

    def prepare(self, cache_dir: str) -> K | None:
        """Build or load the kernel for this CPU's ISA (once: a failed build is remembered by load),
        its shim exported to the process. A second caller meanwhile (the runner prepares the
        attention kernel early, then again with the int8 ones) waits for the first."""
        with self._preparing:
            if self.kernel is None:
                isa = vector_isa()
                self.kernel = self._load(isa, cache_dir, exported=True) if isa is not None else None
        return self.kernel


_lock = threading.Lock()
"""Guards _builds (not a build itself: kernels build side by side)."""
_builds: dict[tuple[str, str], threading.Lock] = {}
"""One lock per (source, ISA): a second caller of the same build waits for the first."""
_loaded: dict[tuple[str, str, bool], ctypes.CDLL | None] = {}


def load(source: str, isa: VectorIsa, cache_dir: str, exported: bool = False) -> ctypes.CDLL | None:
    """The shared object of `source` (a .cpp beside this file) for `isa`, built if the cache has
    none; None (logged once) if it cannot be built, so that callers fall back to torch's ops.
    `exported`: its symbols (the C shim) resolve calls from libraries loaded after it (RTLD_GLOBAL).
    cache_dir "" builds into a scratch folder that is removed once the library is mapped."""
    with _lock:
        build = _builds.setdefault((source, isa.name), threading.Lock())
    key = (source, isa.name, exported)
    with build:
        if key not in _loaded:
            _loaded[key] = _build_and_load(SOURCES / source, isa, cache_dir, exported)
        return _loaded[key]


def load_bound(name: str, isa: VectorIsa, cache_dir: str, exported: bool = False) -> ctypes.CDLL | None:
    """kernels/<name>.cpp built for `isa` (load), checked (its ember_<name>_vector_width is the
    ISA's) and bound to torch's C shim (ember_<name>_bind); None, logged, where any of that fails."""
    lib = load(f"{name}.cpp", isa, cache_dir, exported)
    if lib is None or getattr(lib, f"ember_{name}_vector_width")() != isa.width:
        return None
    try:
        bind_shim(lib, f"ember_{name}_bind")
    except (OSError, AttributeError) as exc:  # a torch laid out unlike its wheels
        logger.warning("Ember's %s kernel cannot reach torch's C shim (%s); using torch's ops instead", name, exc)
        return None
    return lib


def _build_and_load(source: Path, isa: VectorIsa, cache_dir: str, exported: bool) -> ctypes.CDLL | None:
    digest = hashlib.sha256(source.read_bytes() + b"".join(h.read_bytes() for h in sorted(SOURCES.glob("*.h"))))
    digest.update(f"\0{isa.name}\0{isa.flags}\0{torch.__version__}".encode())
    name = f"lib{source.stem}-{isa.name}-{digest.hexdigest()[:16]}.so"
    mode = ctypes.RTLD_GLOBAL if exported else ctypes.RTLD_LOCAL
    try:
        if not cache_dir:
            with tempfile.TemporaryDirectory(prefix="ember-kernels-") as scratch:
                target = Path(scratch) / name
                _compile(source, isa, target)
                return ctypes.CDLL(str(target), mode=mode)
        target = Path(cache_dir) / "kernels" / name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(f".{os.getpid()}.partial")
            _compile(source, isa, partial)
            os.replace(partial, target)  # atomic: a concurrent build of the same file is harmless
        return ctypes.CDLL(str(target), mode=mode)
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("could not build Ember's %s kernel for %s (%s); using torch's ops instead",
                       source.stem, isa.name, exc)
        return None


def compiler() -> str:
    """The C++ compiler: $CXX, else the first of g++, c++, clang++ on PATH (as inductor picks)."""
    for candidate in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if candidate and shutil.which(candidate):
            return candidate
    raise OSError("no C++ compiler found (set CXX or install g++)")


def _compile(source: Path, isa: VectorIsa, target: Path) -> None:
    command = [compiler(), "-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp", *isa.flags,
               f"-DEMBER_W={isa.width}", str(source), "-o", str(target)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
    if result.returncode != 0:
        raise subprocess.SubprocessError(f"{command[0]} exited {result.returncode}: {result.stderr.strip()[-2000:]}")


SHIM_FUNCTIONS = ("aoti_torch_get_dim", "aoti_torch_get_dtype", "aoti_torch_get_sizes", "aoti_torch_get_strides",
                  "aoti_torch_get_data_ptr", "aoti_torch_empty_strided", "aoti_torch_delete_tensor_object",
                  "aoti_torch_cpu__int_mm_out")
"""The C shim functions a kernel's shim entry calls, in common.h's Shim order."""
SHIM_CODES = ("aoti_torch_dtype_float32", "aoti_torch_dtype_bool", "aoti_torch_dtype_int8", "aoti_torch_dtype_int32",
              "aoti_torch_dtype_int64", "aoti_torch_device_type_cpu")
"""The dtype and device codes it needs, in common.h bind's order."""


def bind_shim(lib: ctypes.CDLL, entry: str) -> None:
    """Hand the library (through its `entry`, which calls common.h bind) the running torch's C
    shim functions and codes. Raises OSError or AttributeError on a torch laid out unlike its
    wheels."""
    torch_cpu = ctypes.CDLL(str(Path(torch.__file__).resolve().parent / "lib" / "libtorch_cpu.so"))
    functions = (ctypes.c_void_p * len(SHIM_FUNCTIONS))(
        *(ctypes.cast(getattr(torch_cpu, name), ctypes.c_void_p).value for name in SHIM_FUNCTIONS))
    getters = [getattr(torch_cpu, name) for name in SHIM_CODES]
    for getter in getters:
        getter.restype = ctypes.c_int32
    codes = (ctypes.c_int32 * len(getters))(*(getter() for getter in getters))
    bind = getattr(lib, entry)
    bind.restype = None
    bind.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    bind(functions, codes)
