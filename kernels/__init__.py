"""anyprec.kernels: bitplane packing and the bitplane-LUT matmul (reference, native CPU, Triton).

`matmul` and `dequantize` are the single dispatch point; see `dispatch.py` for the rule.
Importing this package needs neither triton nor the built native library.
"""

from anyprec.kernels.bitplanes import pack_bitplanes, unpack_bitplanes, words_per_row
from anyprec.kernels.dispatch import (
    Backend,
    decode_plan,
    dequantize,
    half_decode_plan,
    int8_decode_plan,
    matmul,
    native_available,
    resolve_backend,
)

__all__ = [
    "Backend",
    "decode_plan",
    "dequantize",
    "half_decode_plan",
    "int8_decode_plan",
    "matmul",
    "native_available",
    "pack_bitplanes",
    "resolve_backend",
    "unpack_bitplanes",
    "words_per_row",
]
