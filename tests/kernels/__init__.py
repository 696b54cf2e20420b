"""Tests of Ember's own kernels (ember/kernels)."""

from __future__ import annotations

from ember.kernels import library


def builds() -> list[library.VectorIsa]:
    """The ISAs this CPU can run a build of (an AVX-512 CPU runs the AVX2 build too)."""
    isa = library.vector_isa()
    return {None: [], "avx2": [library.AVX2], "avx512": [library.AVX512, library.AVX2]}[isa and isa.name]


RUNS_INT8_MM = library.vector_isa() == library.AVX512 and {"avx512_vnni", "avx512bw"} <= library.cpu_flags()
"""Whether this CPU runs Ember's int8_mm kernel (AVX512-VNNI, and torch on AVX-512)."""


def attention_isa() -> library.VectorIsa | None:
    """The build of the attention kernel this CPU gets: with the bf16 variant where it has AVX512-BF16."""
    isa = library.vector_isa()
    if isa == library.AVX512 and {"avx512_bf16", "avx512bw"} <= library.cpu_flags():
        return library.AVX512_BF16
    return isa
