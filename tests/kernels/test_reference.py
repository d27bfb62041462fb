"""The reference backend against a float64 oracle, and the dispatch rule."""

from __future__ import annotations

import pytest
import torch

from anyprec.kernels import Backend, dequantize, matmul, resolve_backend
from tests.kernels.kernels_testlib import ODD_SHAPES, oracle, random_layer


@pytest.mark.parametrize("shape", ODD_SHAPES)
@pytest.mark.parametrize("bits", [1, 3, 5, 8])
def test_reference_matmul_matches_oracle(shape: tuple[int, int], bits: int) -> None:
    n, k = shape
    codes, luts, planes = random_layer(n, k, 8, seed=n * 31 + k)
    x = torch.randn(3, k)
    bias = torch.randn(n)
    y = matmul(x, planes, luts[bits], bits, k, bias=bias, backend=Backend.REFERENCE)
    expected = oracle(x, codes, luts[bits], bits, 8) + bias.double()
    assert y.dtype == torch.float32 and y.shape == (3, n)
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-4 * k**0.5)


def test_dequantize_reference_dtype_and_values() -> None:
    codes, luts, planes = random_layer(9, 45, 6, seed=3)
    w = dequantize(planes, luts[4], 4, 45, torch.bfloat16, backend="reference")
    assert w.dtype == torch.bfloat16 and w.shape == (9, 45)
    expected = torch.gather(luts[4], 1, codes.to(torch.int64) >> 2).to(torch.bfloat16)
    assert torch.equal(w, expected)


def test_matmul_keeps_leading_dims() -> None:
    _, luts, planes = random_layer(6, 40, 4, seed=5)
    y = matmul(torch.randn(2, 3, 40), planes, luts[3], 3, 40, backend="reference")
    assert y.shape == (2, 3, 6)


def test_dispatch_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANYPREC_BACKEND", "reference")
    assert resolve_backend(torch.device("cuda")) is Backend.REFERENCE
    assert resolve_backend(torch.device("cpu"), "triton") is Backend.TRITON
    monkeypatch.delenv("ANYPREC_BACKEND")
    assert resolve_backend(torch.device("cuda")) is Backend.TRITON
    assert resolve_backend(torch.device("cpu")) in (Backend.CPU, Backend.REFERENCE)
    monkeypatch.setenv("ANYPREC_BACKEND", "gpu")
    with pytest.raises(ValueError, match="'gpu'"):
        resolve_backend(torch.device("cpu"))
