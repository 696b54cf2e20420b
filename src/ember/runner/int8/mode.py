"""Int8Mode: the int8 lifecycle of one model, driven by the ModelRunner at load and compile.

    load_stored()                       a restart: the calibrated layers come from the cache
    or calibrate() [while the graph builds from int8_template()] -> measure_and_store()
    or inherit() from the rung before   its calibration, with more linears back in float32
    then passes_gate()                  keep int8, refuse to start, or hand back to float

The gate: before quantizing, the float32 model embeds the probe texts (disjoint from the
calibration texts); after, the int8 model (compiled, unless the engine runs eagerly) embeds them
again, and if the lowest cosine is below `min_cosine` the engine refuses to start, saying what
it measured (quantization="int8"), or runs the float model ("auto").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ember.runner.int8.calibration import (
    calibration_and_probe_texts,
    capture_linear_inputs,
    int8_template,
    quantize_int8,
    swap_int8_back,
)
from ember.runner.int8.gate import QuantizationQualityError, enforce_gate, lowest_cosine
from ember.runner.int8.kernel import Int8Kernel
from ember.runner.int8.store import load_quantized, save_quantized
from ember.runner.memory import release_free_memory

logger = logging.getLogger(__name__)


class Int8Mode:
    def __init__(self, kernel: Int8Kernel, layers_path: Path | None, min_cosine: float, required: bool,
                 embed_texts: Callable[[list[str]], torch.Tensor],
                 compare: Callable[[torch.Tensor, torch.Tensor], float] | None = None) -> None:
        self.kernel = kernel
        self.layers_path = layers_path
        """Where the calibrated layers are stored (None: no disk cache)."""
        self.min_cosine = min_cosine
        self.required = required
        """quantization="int8" (refuse below the gate) rather than "auto" (fall back to float)."""
        self._embed_texts = embed_texts
        """The model's outputs on texts: vectors, or a classifier's scores."""
        self._compare = compare or lowest_cosine
        self._measure_name = "lowest cosine" if compare is None else "1 - largest score difference"
        """How far int8 outputs are from float32: the lowest cosine (vectors), score_agreement (scores)."""
        self.measured: float | None = None
        """The probe set's lowest cosine against float32, once measured (or loaded)."""
        self._probe: tuple[list[str], torch.Tensor] | None = None
        """The probe texts and the float32 model's outputs on them, once this process calibrated."""
        self.awaits_measure = False
        """Calibrated (or inherited) in this process, not measured on the probe set yet."""

    def load_stored(self, model: nn.Module) -> bool:
        """Swap in the stored layers if there are any; an unreadable entry is recalibrated."""
        path = self.layers_path
        if path is None or not path.is_file():
            return False
        try:
            self.measured = load_quantized(model, path, self.kernel)
        except Exception as exc:
            logger.warning("ignoring unreadable int8 cache entry %s (%s); recalibrating", path, exc)
            return False
        logger.info("int8: layers loaded from %s", path)
        return True

    def template(self, model: nn.Module) -> nn.Module:
        """A copy of `model` with the int8 structure, to build the graph from while calibrating."""
        return int8_template(model, self.kernel)

    def calibrate(self, model: nn.Module) -> None:
        """Embed the probe texts in float32 (the gate's reference), capture what every linear sees
        on the calibration texts, and swap the linears for their int8 versions."""
        calibration, probe = calibration_and_probe_texts()
        self._probe = (probe, self._embed_texts(probe))
        captured = capture_linear_inputs(model, lambda: self._embed_texts(calibration))
        replaced = quantize_int8(model, captured, self.kernel)
        del captured
        release_free_memory()
        self.awaits_measure = True
        logger.info("int8 (%s): %d linear layers calibrated on %d texts", self.kernel.label, replaced,
                    len(calibration))

    def can_hand_down(self) -> bool:
        """Whether this rung calibrated in this process, so that the next rung can inherit it."""
        return self._probe is not None

    def inherit(self, previous: Int8Mode, model: nn.Module, float_model: nn.Module) -> None:
        """Become the next rung from `previous`'s calibration of `model`, without calibrating
        again: the linears this kernel keeps in float32 get `float_model`'s back, and every other
        Int8Linear is what calibrating with this kernel would give, since each linear's choice
        depends only on what it saw in the float32 model. The probe set's float32 reference
        carries over too; the rung is measured next (measure_and_store)."""
        assert previous.can_hand_down(), "the previous rung did not calibrate in this process"
        float_linears = dict(float_model.named_modules())
        replaced = swap_int8_back(model, lambda name: None if self.kernel.quantizes(name) else float_linears[name])
        self._probe, self.awaits_measure = previous._probe, True
        logger.info("int8 (%s): %d linear layers back in float32, the others as calibrated", self.kernel.label,
                    replaced)

    def measure_and_store(self, model: nn.Module) -> None:
        """Measure the int8 model (compiled, if it is) on the probe set and store the layers."""
        assert self._probe is not None, "calibrate() first"
        probe, reference = self._probe
        self.awaits_measure = False
        self.measured = self._compare(reference, self._embed_texts(probe))
        if self.layers_path is not None:
            try:
                save_quantized(model, self.layers_path, self.measured)
            except OSError as exc:  # a read-only or full cache costs the next start a calibration, nothing more
                logger.warning("could not store the int8 layers in %s (%s)", self.layers_path, exc)

    def passes_gate(self) -> bool:
        """Whether int8 stays. Below the gate: raises if int8 was required, else warns."""
        assert self.measured is not None
        try:
            enforce_gate(self.measured, self.min_cosine, self._measure_name)
        except QuantizationQualityError:
            if self.required:
                raise
            logger.warning("int8 reaches %.6f against float32 on the probe set (%s), below "
                           "quantization_min_cosine=%s: running the float model instead", self.measured,
                           self._measure_name, self.min_cosine)
            return False
        logger.info("int8 (%s): %s vs float32 on the probe set %.4f (gate %.4f)", self.kernel.label,
                    self._measure_name, self.measured, self.min_cosine)
        return True
