"""Tile GEMM (kernels/csrc/ap_tiles.c) against the float64 oracle and the mat-vec kernels:
every ISA family, bit-widths 1..8, fp16/fp32 LUTs, token counts across micro-tile edges,
row counts across block edges, strided x and y. Outputs start as NaN so a skipped row or
column fails."""

from __future__ import annotations

import pytest
import torch

from anyprec.kernels import cpu
from tests.kernels.kernels_testlib import oracle, random_layer

pytestmark = pytest.mark.skipif(not cpu.is_available(), reason="native CPU kernels not built")

def tile_gemm(x: torch.Tensor, planes: torch.Tensor, lut: torch.Tensor, bits: int, k: int, threads: int,
              xstride: int | None = None, ystride: int | None = None) -> torch.Tensor:
    """y f32[T, N] = x[:, :k] @ W_b.T through the tile kernel (x rows `xstride` apart)."""
    n, words = planes.shape[1], planes.shape[2]
    tokens = x.shape[0]
    ystride = ystride or n
    y = torch.full((tokens, ystride), float("nan"))
    cpu._lib().tile_gemm(planes.data_ptr(), planes.stride(0), n, words, k, lut.data_ptr(),
                         int(lut.dtype == torch.float16), bits, x.data_ptr(), tokens, xstride or x.shape[1],
                         y.data_ptr(), ystride, threads)
    return y


def _tol(y: torch.Tensor, expected: torch.Tensor, x: torch.Tensor, lut: torch.Tensor) -> None:
    """fp32 rounding over K terms: scale by sum |x| * max |lut|."""
    scale = x.double().abs().sum(-1, keepdim=True) * lut.double().abs().max()
    err = (y.double() - expected).abs()
    assert torch.isfinite(y).all()
    assert (err <= 1e-6 * scale + 1e-30).all(), float((err / scale).max())


# (1, 1): one row, one column; 7 columns: no full vector; 200 x 1000: many blocks, odd tails
@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (13, 64), (33, 257), (200, 1000)])
@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("lut_dtype", [torch.float32, torch.float16])
def test_tiles_match_oracle(isa: str, shape: tuple[int, int], bits: int, lut_dtype: torch.dtype) -> None:
    n, k = shape
    codes, luts, planes = random_layer(n, k, 8, seed=bits * 131 + n + k)
    lut = luts[bits].to(lut_dtype).contiguous()
    for tokens, threads in ((1, 1), (7, 2), (13, 2)):
        x = torch.randn(tokens, k)
        y = tile_gemm(x, planes, lut, bits, k, threads)
        _tol(y, oracle(x, codes, lut.float(), bits, 8), x, lut)


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_tiles_equal_the_matvec_path_and_honour_strides(isa: str, bits: int) -> None:
    n, k = 97, 320
    _, luts, planes = random_layer(n, k, 8, seed=bits)
    lut = luts[bits].half().contiguous()
    x_wide = torch.randn(10, k + 9)  # rows 9 floats apart more than k: x is read by stride
    x = x_wide[:, :k].contiguous()
    y = tile_gemm(x_wide, planes, lut, bits, k, 2, xstride=k + 9, ystride=n + 5)
    assert torch.isnan(y[:, n:]).all(), "the tile kernel wrote past n columns of a strided y"
    want = torch.empty(10, n)
    for t0 in range(0, 10, 8):  # the decode kernel takes up to 8 tokens per call
        t = min(8, 10 - t0)
        cpu._lib().gemv(planes.data_ptr(), planes.stride(0), n, planes.shape[2], k, lut.data_ptr(), 1, bits,
                        x[t0].data_ptr(), t, k, want[t0].data_ptr(), n, 1)
    _tol(y[:, :n], want.double(), x, lut)  # both fp32, summed in different orders


def test_bad_token_count_is_refused() -> None:
    _, luts, planes = random_layer(4, 32, 8, seed=0)
    with pytest.raises(ValueError, match="tokens=0"):
        cpu._lib().tile_gemm(planes.data_ptr(), planes.stride(0), 4, 1, 32, luts[3].data_ptr(), 0, 3,
                             0, 0, 32, 0, 4, 1)
