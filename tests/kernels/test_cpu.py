"""Native CPU backend against the float64 oracle: every ISA family, bit-width, token count.

Outputs are poisoned (NaN) before each call through the `out` buffers the wrapper fills,
so a kernel that skips a row or a column cannot pass by leftover values.
"""

from __future__ import annotations

import pytest
import torch

from anyprec.kernels import Backend, cpu, dequantize, matmul
from tests.kernels.kernels_testlib import ODD_SHAPES, oracle, random_layer

needs_native = pytest.mark.skipif(not cpu.is_available(), reason="native CPU kernels not built")

@pytest.fixture(autouse=True)
def poisoned_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every torch.empty the wrapper allocates starts as NaN (or all-ones bits for ints)."""
    real_empty = torch.empty

    def empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(-1)

    monkeypatch.setattr(cpu.torch, "empty", empty)


def _tol(y: torch.Tensor, expected: torch.Tensor, x: torch.Tensor, lut: torch.Tensor) -> None:
    """fp32 rounding over K terms: scale by sum |x| * max |lut|."""
    scale = x.double().abs().sum(-1, keepdim=True) * lut.double().abs().max()
    err = (y.double() - expected).abs()
    assert torch.isfinite(y).all()
    assert (err <= 1e-6 * scale + 1e-30).all(), float((err / scale).max())


@needs_native
# (9, 1216): 19 steps of 64 columns per row = two unrolled lines of 8 + 3 more, odd row count
@pytest.mark.parametrize("shape", ODD_SHAPES + [(19, 4096), (150, 2080), (9, 1216)])
@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("lut_dtype", [torch.float32, torch.float16])
def test_decode_matches_oracle(isa: str, shape: tuple[int, int], bits: int, lut_dtype: torch.dtype) -> None:
    n, k = shape
    codes, luts, planes = random_layer(n, k, 8, seed=bits * 7919 + n * 31 + k)
    lut = luts[bits].to(lut_dtype)
    for tokens in (1, 3, 8):
        x = torch.randn(tokens, k)
        y = matmul(x, planes, lut, bits, k, backend=Backend.CPU)
        assert y.shape == (tokens, n) and y.dtype == torch.float32
        _tol(y, oracle(x, codes, lut.float(), bits, 8), x, lut)


@needs_native
@pytest.mark.parametrize("shape", [(7, 33), (300, 95), (33, 257)])
@pytest.mark.parametrize("tokens", [18, 40])
@pytest.mark.parametrize("bits", [3, 6, 8])
def test_prefill_matches_oracle(isa: str, shape: tuple[int, int], bits: int, tokens: int) -> None:
    n, k = shape
    codes, luts, planes = random_layer(n, k, 8, seed=n + k + bits)
    x = torch.randn(2, tokens // 2, k)
    bias = torch.randn(n)
    y = matmul(x, planes, luts[bits], bits, k, bias=bias, backend="cpu")
    expected = oracle(x, codes, luts[bits], bits, 8) + bias.double()
    assert y.shape == (2, tokens // 2, n)
    _tol(y, expected, x, luts[bits] + bias.abs().max())


@needs_native
@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dequantize_is_exact(isa: str, bits: int, dtype: torch.dtype) -> None:
    _, luts, planes = random_layer(21, 161, 8, seed=bits)
    got = dequantize(planes, luts[bits], bits, 161, dtype, backend="cpu")
    want = dequantize(planes, luts[bits], bits, 161, dtype, backend="reference")
    assert torch.equal(got, want)


@needs_native
def test_bf16_activations_and_child_planes() -> None:
    codes, luts, planes = random_layer(17, 200, 6, seed=11)
    x = torch.randn(1, 200).bfloat16()
    for bits in (3, 4, 6):
        y = matmul(x, planes, luts[bits], bits, 200, backend="cpu")
        ref = matmul(x, planes, luts[bits], bits, 200, backend="reference")
        assert y.dtype == torch.bfloat16
        torch.testing.assert_close(y.float(), ref.float(), rtol=2e-2, atol=2e-2 * 200**0.5)


@needs_native
def test_errors_are_clear() -> None:
    _, luts, planes = random_layer(4, 40, 4, seed=1)
    with pytest.raises(ValueError, match="bits=5"):
        matmul(torch.randn(1, 40), planes, luts[4], 5, 40, backend="cpu")
    with pytest.raises(ValueError, match="in_features=100"):
        matmul(torch.randn(1, 100), planes, luts[4], 4, 100, backend="cpu")
    with pytest.raises(ValueError, match="lut must be"):
        matmul(torch.randn(1, 40), planes, luts[3], 4, 40, backend="cpu")


def test_native_built_when_required() -> None:
    """CI sets ANYPREC_REQUIRE_NATIVE=1 so a failed (optional) build cannot pass silently."""
    import os

    if os.environ.get("ANYPREC_REQUIRE_NATIVE") == "1":
        assert cpu.is_available(), f"native CPU kernels did not build: {cpu.IMPORT_ERROR}"


@needs_native
@pytest.mark.parametrize("shape", ODD_SHAPES + [(19, 4096), (150, 2080)])
def test_half_weight_decode_matches_oracle(isa: str, shape: tuple[int, int]) -> None:
    """fp16-stored dense weight, fp32 math: within fp32 rounding of the float64 product."""
    n, k = shape
    gen = torch.Generator().manual_seed(n * 31 + k)
    weight = torch.randn(n, k, generator=gen).half()
    plan = cpu.HalfDecodePlan(weight)
    for tokens in (1, 3, 8):
        x = torch.randn(tokens, k, generator=gen)
        y = plan(x.unsqueeze(0))
        assert y.shape == (1, tokens, n) and y.dtype == torch.float32
        expected = x.double() @ weight.double().T
        _tol(y[0], expected, x, weight)


@needs_native
def test_half_weight_plan_refuses_other_dtypes() -> None:
    with pytest.raises(ValueError, match=r"float16\[N, K\]"):
        cpu.HalfDecodePlan(torch.zeros(4, 8))
