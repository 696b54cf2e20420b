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
    """The build of the attention kernel this CPU gets: with bf16 products where it has
    AVX512-BF16, else int16 ones where it has AVX512-VNNI."""
    isa = library.vector_isa()
    if isa == library.AVX512 and {"avx512_bf16", "avx512bw"} <= library.cpu_flags():
        return library.AVX512_BF16
    if isa == library.AVX512 and {"avx512_vnni", "avx512bw"} <= library.cpu_flags():
        return library.AVX512_VNNI
    return isa


def int16_attention_builds() -> list[library.VectorIsa]:
    """The builds of the attention kernel with int16 products this CPU can run: AVX2 on every x86
    CPU here, AVX512-VNNI where it has that (the build a CPU without AVX512-BF16 gets)."""
    isa = library.vector_isa()
    builds = [library.AVX2] if isa is not None else []
    if isa == library.AVX512 and {"avx512_vnni", "avx512bw"} <= library.cpu_flags():
        builds.append(library.AVX512_VNNI)
    return builds
