"""AOTIRunner: calls an AOTInductor package's model without holding the GIL.

torch's own loader (`aoti_load_package`) holds the GIL for the whole forward: measured on
MiniLM, a thread counting in a loop advanced 10 times during ten 400 ms forwards. In the
server that stalls the event loop (HTTP parsing, /health, responses) behind every batch. This
runner loads the package's shared object with ctypes, whose foreign calls release the GIL,
and drives it through the AOTInductor C API (torch/csrc/inductor/aoti_runtime/interface.h):
create a container, hand it the model's tensors as user-managed constants, run.
"""

from __future__ import annotations

import ctypes
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch._C import _aoti

_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_new_capsule = ctypes.pythonapi.PyCapsule_New
_new_capsule.restype = ctypes.py_object
_new_capsule.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]


_DTYPE_CODES = {torch.uint8: 0, torch.int8: 1, torch.int16: 2, torch.int32: 3, torch.int64: 4, torch.float16: 5,
                torch.float32: 6, torch.float64: 7, torch.bool: 11, torch.bfloat16: 15}
"""c10::ScalarType codes, which the AOTInductor C API reports constant dtypes in."""


class _ConstantEntry(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("handle", ctypes.c_void_p)]


class AOTIRunner:
    """The compiled model of one .pt2 package, with `tensors` (by FQN) as its weights."""

    def __init__(self, package: Path, tensors: Mapping[str, torch.Tensor], library: ctypes.CDLL | None = None) -> None:
        # One loaded library serves any number of containers, each with its own constants.
        self._lib = library if library is not None else load_shared_object(package)
        self._container = ctypes.c_void_p()
        self._check(self._lib.AOTInductorModelContainerCreateWithDevice(
            ctypes.byref(self._container), ctypes.c_size_t(1), b"cpu", None), "create")
        try:
            self._constant_handles = self._load_constants(tensors)  # the container borrows them
        except Exception:
            self._lib.AOTInductorModelContainerDelete(self._container)
            raise
        count = ctypes.c_size_t()
        self._check(self._lib.AOTInductorModelContainerGetNumOutputs(self._container, ctypes.byref(count)), "outputs")
        self._num_outputs = count.value

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        handles = [_pointer(c) for c in _aoti.unsafe_alloc_void_ptrs_from_tensors(list(inputs))]
        input_array = (ctypes.c_void_p * len(handles))(*handles)  # the container steals these
        output_array = (ctypes.c_void_p * self._num_outputs)()
        self._check(self._lib.AOTInductorModelContainerRun(
            self._container, input_array, ctypes.c_size_t(len(handles)), output_array,
            ctypes.c_size_t(self._num_outputs), None, None), "run")
        outputs = _aoti.alloc_tensors_by_stealing_from_void_ptrs([_new_capsule(p, None, None) for p in output_array])
        return outputs[0]

    def _load_constants(self, tensors: Mapping[str, torch.Tensor]) -> list[int]:
        lib, container = self._lib, self._container
        count = ctypes.c_size_t()
        self._check(lib.AOTInductorModelContainerGetNumConstants(container, ctypes.byref(count)), "constants")
        entries, handles, missing, mismatched = [], [], [], []
        for index in range(count.value):
            name, fqn = ctypes.c_char_p(), ctypes.c_char_p()
            self._check(lib.AOTInductorModelContainerGetConstantName(container, ctypes.c_size_t(index),
                                                                      ctypes.byref(name)), "constant name")
            self._check(lib.AOTInductorModelContainerGetConstantOriginalFQN(container, ctypes.c_size_t(index),
                                                                             ctypes.byref(fqn)), "constant fqn")
            tensor = tensors.get((fqn.value or b"").decode())
            if tensor is None:
                missing.append((fqn.value or b"").decode())
                continue
            if not self._matches(index, tensor):
                mismatched.append((fqn.value or b"").decode())
                continue
            handle = _pointer(_aoti.unsafe_alloc_void_ptr_from_tensor(tensor))
            handles.append(handle)
            entries.append(_ConstantEntry(name.value, handle))
        if missing:
            raise RuntimeError(f"compiled package expects weights the model lacks: {missing[:3]}")
        if mismatched:  # a package built from other model code: running it would compute garbage
            raise RuntimeError(f"compiled package expects other dtypes or sizes for: {mismatched[:3]}")
        array = (_ConstantEntry * len(entries))(*entries)
        self._check(lib.AOTInductorModelContainerUpdateUserManagedConstantBufferPairs(
            container, array, ctypes.c_size_t(len(entries)), ctypes.c_bool(False), ctypes.c_bool(True)), "weights")
        return handles

    def _matches(self, index: int, tensor: torch.Tensor) -> bool:
        """Whether the package's constant `index` has the tensor's dtype and byte size."""
        dtype, size = ctypes.c_int32(), ctypes.c_size_t()
        self._check(self._lib.AOTInductorModelContainerGetConstantDtype(
            self._container, ctypes.c_size_t(index), ctypes.byref(dtype)), "constant dtype")
        self._check(self._lib.AOTInductorModelContainerGetConstantDataSize(
            self._container, ctypes.c_size_t(index), ctypes.byref(size)), "constant size")
        expected = _DTYPE_CODES.get(tensor.dtype)
        nbytes = tensor.numel() * tensor.element_size()
        # AOTInductor reports the size of constants it made itself (scalars) rounded up to 64 bytes.
        return (expected is None or dtype.value == expected) and size.value in (nbytes, -(-nbytes // 64) * 64)

    @staticmethod
    def _check(code: int, what: str) -> None:
        if code != 0:
            raise RuntimeError(f"AOTInductor {what} failed (error {code})")


def _pointer(capsule: object) -> int:
    return _capsule_pointer(capsule, None)


def load_shared_object(package: Path) -> ctypes.CDLL:
    """dlopen the package's model .so (unpacked to a scratch folder, removed once it is mapped)."""
    with zipfile.ZipFile(package) as archive:
        member = next((n for n in archive.namelist() if n.endswith(".so")), None)
        if member is None:
            raise RuntimeError(f"{package} holds no compiled model")
        with tempfile.TemporaryDirectory(prefix="ember-aoti-") as scratch:
            path = Path(scratch) / "model.so"
            path.write_bytes(archive.read(member))
            return ctypes.CDLL(str(path))
