"""Build the native CPU kernels (anyprec.kernels._cpu); metadata lives in pyproject.toml.

One C extension, compiled by the package's own install with gcc: AVX-512 and AVX2
variants are compiled via target attributes and picked at run time from the CPU flags,
so the same build runs on any x86-64 machine (other architectures get the portable C).
OpenMP splits rows over threads. The extension is optional: if it cannot be built the
package installs anyway and `anyprec.kernels` falls back to the reference backend.
"""

from setuptools import Extension, setup

SOURCES = [
    "kernels/csrc/ap_module.c",
    "kernels/csrc/ap_avx512.c",
    "kernels/csrc/ap_avx512_vbmi.c",
    "kernels/csrc/ap_portable.c",
    "kernels/csrc/ap_half.c",
    "kernels/csrc/ap_avx2.c",
    "kernels/csrc/ap_engine.c",
    "kernels/csrc/ap_int8.c",
    "kernels/csrc/ap_lut8_avx2.c",
    "kernels/csrc/ap_tiles.c",
    "kernels/csrc/ap_tiles_int.c",
    "kernels/csrc/ap_attention.c",
    "kernels/csrc/ap_vexp.c",
]

setup(
    ext_modules=[
        Extension(
            "anyprec.kernels._cpu",
            sources=SOURCES,
            depends=["kernels/csrc/ap_kernels.h", "kernels/csrc/ap_avx512_common.h", "kernels/csrc/ap_engine.h",
                     "kernels/csrc/ap_avx2_codes.h", "kernels/csrc/ap_tiles.h", "kernels/csrc/ap_attention.h",
                     "kernels/csrc/ap_vexp.h"],
            extra_compile_args=["-O3", "-fopenmp", "-fno-strict-aliasing", "-std=c11", "-Wall", "-Wno-unused-function"],
            extra_link_args=["-fopenmp"],
            # without a C compiler the install still succeeds; the reference backend is used
            optional=True,
        )
    ],
)
