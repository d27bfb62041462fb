"""The AVX2 dequantizer (the tile GEMM's prefill path) equals the portable one bit for bit.

Both compute the same float ops (uint8 LUTs: lo + scale * q as a rounded multiply then a
rounded add; fp16 widened exactly; bf16 rounded to nearest even), so any difference in a
lookup, a column order, a tail or a rounding step shows as an unequal tensor.
"""

from __future__ import annotations

import pytest
import torch

from anyprec.kernels import Backend, cpu, dequantize
from anyprec.lutq import quantize_lut
from tests.kernels.kernels_testlib import ODD_SHAPES, random_layer

pytestmark = pytest.mark.skipif(
    not cpu.is_available() or cpu.best_isa() == "portable", reason="needs the native kernels on an AVX2 CPU"
)


def _both(planes: torch.Tensor, lut, bits: int, k: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    before = cpu.isa()
    try:
        cpu.set_isa("avx2")
        got = dequantize(planes, lut, bits, k, dtype, backend=Backend.CPU)
        cpu.set_isa("portable")
        want = dequantize(planes, lut, bits, k, dtype, backend=Backend.CPU)
    finally:
        cpu.set_isa(before)
    return got, want


@pytest.mark.parametrize("shape", ODD_SHAPES)
@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("kind", ["u8", "f16", "f32"])
def test_avx2_dequant_equals_portable(shape: tuple[int, int], bits: int, kind: str) -> None:
    n, k = shape
    _, luts, planes = random_layer(n, k, 8, seed=bits * 7 + n + k)
    lut = {"u8": lambda t: quantize_lut(t * 0.05 + 0.01 * bits), "f16": torch.Tensor.half, "f32": lambda t: t}[kind](
        luts[bits]
    )
    for dtype in (torch.float32, torch.bfloat16):
        got, want = _both(planes, lut, bits, k, dtype)
        assert got.dtype == dtype and got.shape == (n, k)
        assert torch.equal(got, want), f"{kind} {bits}-bit {dtype} differs"


@pytest.mark.parametrize("bits", [3, 8])
def test_bf16_rounding_edges_match(bits: int) -> None:
    """fp32 LUT entries at bf16 ties, near overflow, inf and nan round as the portable kernel."""
    n, k = 9, 77
    _, luts, planes = random_layer(n, k, 8, seed=5)
    raw = torch.randint(-(2**31), 2**31 - 1, luts[bits].shape, dtype=torch.int64)
    raw[:, 0] = 0x3F808000  # exact tie, even below: rounds down
    raw[:, 1] = 0x3F818000  # exact tie, odd below: rounds up
    raw[:, 2] = 0x7F7FFFFF  # largest float: rounds to inf
    raw[:, 3 % raw.shape[1]] = 0x7FC00001  # nan
    lut = raw.to(torch.int32).view(torch.float32)
    got, want = _both(planes, lut, bits, k, torch.bfloat16)
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))
