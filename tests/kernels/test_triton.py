"""Triton kernels under TRITON_INTERPRET=1 on small shapes: agreement with the oracle."""

from __future__ import annotations

import os

import pytest
import torch

from tests.kernels.kernels_testlib import oracle, random_layer

triton = pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
    pytest.skip("no GPU and TRITON_INTERPRET is not 1", allow_module_level=True)

from anyprec.kernels import Backend, dequantize, matmul  # noqa: E402

SHAPES = [(1, 1), (7, 33), (17, 95), (5, 130)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bits", [1, 3, 4, 6, 8])
def test_gemv_matches_oracle(shape: tuple[int, int], bits: int) -> None:
    n, k = shape
    codes, luts, planes = random_layer(n, k, 8, seed=bits * 101 + n + k)
    x = torch.randn(3, k)
    y = matmul(x, planes, luts[bits], bits, k, backend=Backend.TRITON)
    assert y.shape == (3, n) and torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), oracle(x, codes, luts[bits], bits, 8), rtol=1e-5, atol=1e-5 * k**0.5)


@pytest.mark.parametrize("bits", [2, 5, 7])
def test_dequantize_is_exact(bits: int) -> None:
    _, luts, planes = random_layer(19, 70, 8, seed=bits)
    got = dequantize(planes, luts[bits], bits, 70, torch.float32, backend="triton")
    want = dequantize(planes, luts[bits], bits, 70, torch.float32, backend="reference")
    assert torch.equal(got, want)


def test_prefill_path_with_bias() -> None:
    codes, luts, planes = random_layer(9, 45, 6, seed=4)
    x = torch.randn(12, 45)
    bias = torch.randn(9)
    y = matmul(x, planes, luts[4], 4, 45, bias=bias, backend="triton")
    expected = oracle(x, codes, luts[4], 4, 6) + bias.double()
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("bits", [1, 4, 8])
def test_uint8_lut_widened_in_kernel(bits: int) -> None:
    from anyprec.lutq import dequantize_lut, quantize_lut

    codes, luts, planes = random_layer(17, 95, 8, seed=bits + 50)
    qlut = quantize_lut(luts[bits])
    x = torch.randn(3, 95)
    y = matmul(x, planes, qlut, bits, 95, backend=Backend.TRITON)
    torch.testing.assert_close(y.double(), oracle(x, codes, dequantize_lut(qlut), bits, 8), rtol=1e-5, atol=1e-4)
    got = dequantize(planes, qlut, bits, 95, torch.float32, backend="triton")
    assert torch.equal(got, dequantize(planes, qlut, bits, 95, torch.float32, backend="reference"))
