"""Opaque weights: tensors a model holds in a library's own layout, which torch.export and
copy.deepcopy cannot take (an OpaqueTensorImpl has no storage): oneDNN's packed float weights
(PackedLinear.weight_packed) and the int8 onednn kernel's prepacked ones (Int8Linear.weight_packed).

A module that holds such tensors says what stands in for them with `opaque_placeholders()`: a plain
tensor per buffer name, of the same dtype and byte size. A compiled package holds no weights, so a
graph built from placeholders runs with the real opaque tensors handed to it at load
(aot_package.py), like every other weight.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def placeholders(model: nn.Module) -> Iterator[None]:
    """While inside, every opaque weight of `model` is its module's placeholder (uninitialized
    values), so that torch.export and copy.deepcopy can take the model; the opaque tensors come
    back on exit. A copy made inside keeps the placeholders: a template to build a graph from."""
    swapped = []
    for module in model.modules():
        make = getattr(module, "opaque_placeholders", None)
        if make is None:
            continue
        for name, placeholder in make().items():
            swapped.append((module, name, getattr(module, name)))
            setattr(module, name, placeholder)
    try:
        yield
    finally:
        for module, name, opaque in swapped:
            setattr(module, name, opaque)
