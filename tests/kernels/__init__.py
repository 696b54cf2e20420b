"""Tests of Ember's own kernels (ember/kernels)."""

from __future__ import annotations

from ember.kernels import library


def builds() -> list[library.VectorIsa]:
    """The ISAs this CPU can run a build of (an AVX-512 CPU runs the AVX2 build too)."""
    isa = library.vector_isa()
    return {None: [], "avx2": [library.AVX2], "avx512": [library.AVX512, library.AVX2]}[isa and isa.name]
