"""uint8 LUTs (anyprec.lutq) on every backend: the same numbers as the float LUT they dequantize to.

The oracle multiplies in float64 from the unpacked codes and `dequantize_lut` of the
QuantizedLut, so a backend that ignored lo / scale, read the codes as another type or
mixed rows would fail.
"""

from __future__ import annotations

import pytest
import torch

from anyprec.kernels import Backend, cpu, dequantize, matmul
from anyprec.lutq import QuantizedLut, dequantize_lut, quantize_lut
from tests.kernels.kernels_testlib import ODD_SHAPES, oracle, random_layer

native = pytest.mark.skipif(not cpu.is_available(), reason="native CPU kernels not built")


def _u8_layer(n: int, k: int, parent: int, seed: int):
    codes, luts, planes = random_layer(n, k, parent, seed)
    return codes, {b: quantize_lut(lut * 0.05 + 0.01 * b) for b, lut in luts.items()}, planes


@native
@pytest.mark.parametrize("shape", ODD_SHAPES)
@pytest.mark.parametrize("bits", range(1, 9))
def test_native_gemv_matches_oracle(shape: tuple[int, int], bits: int) -> None:
    n, k = shape
    codes, qluts, planes = _u8_layer(n, k, 8, seed=bits * 31 + n + k)
    for tokens in (1, 3, 8):
        x = torch.randn(tokens, k)
        y = matmul(x, planes, qluts[bits], bits, k, backend=Backend.CPU)
        want = oracle(x, codes, dequantize_lut(qluts[bits]), bits, 8)
        torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-5 * k**0.5)


@native
@pytest.mark.parametrize("bits", [1, 3, 5, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_dequantize_is_exact(bits: int, dtype: torch.dtype) -> None:
    _, qluts, planes = _u8_layer(37, 101, 8, seed=bits)
    got = dequantize(planes, qluts[bits], bits, 101, dtype, backend=Backend.CPU)
    want = dequantize(planes, qluts[bits], bits, 101, dtype, backend=Backend.REFERENCE)
    assert got.dtype == dtype and torch.equal(got, want)


@native
@pytest.mark.parametrize("isa", ["portable", "avx2"])
def test_every_isa_reads_uint8_luts(isa: str) -> None:
    if isa == "avx2" and cpu.best_isa() == "portable":
        pytest.skip("no AVX2 on this CPU")
    codes, qluts, planes = _u8_layer(29, 200, 6, seed=7)
    x = torch.randn(40, 200)  # 40 tokens: the prefill path (dequantized tiles) at 6 bits
    before = cpu.isa()
    cpu.set_isa(isa)
    try:
        for tokens in (2, 40):
            y = matmul(x[:tokens], planes, qluts[6], 6, 200, backend=Backend.CPU)
            want = oracle(x[:tokens], codes, dequantize_lut(qluts[6]), 6, 6)
            torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-4)
    finally:
        cpu.set_isa(before)


def test_reference_uses_lo_and_scale() -> None:
    codes, qluts, planes = _u8_layer(5, 40, 4, seed=3)
    shifted = QuantizedLut(qluts[4].q, qluts[4].lo + 1.0, qluts[4].scale * 2)
    w = dequantize(planes, shifted, 4, 40, backend=Backend.REFERENCE)
    child = codes.long()
    expected = torch.gather(qluts[4].lo[:, None] + 1.0 + qluts[4].scale[:, None] * 2 * qluts[4].q.float(), 1, child)
    assert torch.equal(w, expected)


def test_bad_uint8_lut_is_named() -> None:
    _, qluts, planes = _u8_layer(5, 40, 4, seed=3)
    bad = QuantizedLut(qluts[4].q, qluts[4].lo[:3], qluts[4].scale)
    with pytest.raises(ValueError, match="quantize_lut"):
        matmul(torch.randn(1, 40), planes, bad, 4, 40, backend=Backend.REFERENCE)
