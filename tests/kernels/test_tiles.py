"""Tile GEMM (kernels/csrc/ap_tiles.c) against the float64 oracle and the mat-vec kernels:
every ISA family, bit-widths 1..8, fp16/fp32 LUTs, token counts across micro-tile edges,
row counts across block edges, strided x and y; the integer tiles of uint8 LUTs against the
oracle (within their derived rounding bound), their own integer scheme, the fp32 tiles and
the uint8 mat-vec. Outputs start as NaN so a skipped row or column fails."""

from __future__ import annotations

import pytest
import torch

from anyprec.kernels import cpu
from anyprec.lutq import QuantizedLut, dequantize_lut, quantize_lut
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


@pytest.mark.parametrize("bits", [3, 8])
def test_tiles_across_panel_edges(isa: str, bits: int) -> None:
    """Token counts around the 16-token activation panels (a last panel of <= 8 tokens is
    packed 8 wide) and row counts around the 6-row micro-tile, 1 and 2 threads."""
    n, k = 61, 203  # 61 rows: 10 full micro-tiles and one of 1 row; 203 columns: a ragged 8 x 8 tail
    codes, luts, planes = random_layer(n, k, 8, seed=bits + 40)
    lut = luts[bits].contiguous()
    for tokens in (8, 9, 15, 16, 17, 24, 25, 40):
        x = torch.randn(tokens, k)
        for threads in (1, 2):
            _tol(tile_gemm(x, planes, lut, bits, k, threads), oracle(x, codes, lut, bits, 8), x, lut)


def test_bad_token_count_is_refused() -> None:
    _, luts, planes = random_layer(4, 32, 8, seed=0)
    with pytest.raises(ValueError, match="tokens=0"):
        cpu._lib().tile_gemm(planes.data_ptr(), planes.stride(0), 4, 1, 32, luts[3].data_ptr(), 0, 3,
                             0, 0, 32, 0, 4, 1)


# -- integer tiles (uint8 LUTs: int16 q x int16 activations, kernels/csrc/ap_tiles_int.c) ----------

KB = 256  # AP_I16_KB: activation columns per int16 scale
AUTO, FP32 = 0, 1  # tile kinds (AP_TILES_*): auto picks int16 for uint8 LUTs on AVX2
needs_avx2 = pytest.mark.skipif(not cpu.is_available() or cpu.best_isa() == "portable",
                                reason="integer tiles need the AVX2 kernels")


def tile_gemm_u8(x: torch.Tensor, planes: torch.Tensor, qlut, bits: int, k: int, threads: int,
                 kind: int) -> torch.Tensor:
    """y f32[T, N] through the tile kernel on a uint8 LUT (q, lo, scale) of `kind`."""
    n, words = planes.shape[1], planes.shape[2]
    y = torch.full((x.shape[0], n), float("nan"))
    cpu._lib().tile_gemm(planes.data_ptr(), planes.stride(0), n, words, k, qlut.q.data_ptr(), 0, bits,
                         x.data_ptr(), x.shape[0], x.shape[1], y.data_ptr(), n, threads, qlut.lo.data_ptr(),
                         qlut.scale.data_ptr(), kind)
    return y


def int16_acts(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's activation rounding in fp32: per KB-column block sx = absmax / 32767 and
    xq = round-half-even(x * (32767 / absmax)) (lrintf); returns (xq, sx per column)."""
    xq, sx = torch.zeros_like(x), torch.zeros_like(x)
    for k0 in range(0, x.shape[1], KB):
        blk = x[:, k0:k0 + KB]
        amax = blk.abs().amax(dim=1, keepdim=True)
        inv = torch.where(amax > 0, torch.tensor(32767.0) / amax, torch.zeros_like(amax))
        xq[:, k0:k0 + KB] = torch.round(blk * inv)
        sx[:, k0:k0 + KB] = amax / 32767.0
    return xq, sx


def _int_bound(x: torch.Tensor, qlut) -> torch.Tensor:
    """|int16 tiles - exact| per (token, row): each column's activation is off by at most
    0.51 * sx of its block (half a step, plus fp32 rounding of x / sx and of sx: < 0.01 step),
    times that column's weight above lo (<= 255 * scale, since y = lo * sum x + scale * q . x),
    plus the fp32 summation bound of the fp32 path."""
    _, sx = int16_acts(x)
    quant = 0.51 * sx.double().sum(-1, keepdim=True) * (255 * qlut.scale.double())[None, :]
    lut = dequantize_lut(qlut)
    return quant + 1e-6 * x.double().abs().sum(-1, keepdim=True) * lut.double().abs().max()


@needs_avx2
@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (13, 64), (33, 257), (200, 1000)])
@pytest.mark.parametrize("bits", range(1, 9))
def test_int_tiles_match_oracle_and_their_integer_scheme(shape: tuple[int, int], bits: int) -> None:
    n, k = shape
    codes, luts, planes = random_layer(n, k, 8, seed=bits * 17 + n + k)
    qlut = quantize_lut(luts[bits])
    lut = dequantize_lut(qlut)
    child = codes.to(torch.int64) >> (8 - bits)
    q = torch.gather(qlut.q.double(), 1, child)  # [n, k] codes of the weights
    for tokens, threads in ((1, 1), (4, 2), (7, 1), (130, 2)):
        x = torch.randn(tokens, k) * torch.rand(1, k) * 4  # columns of different magnitudes
        y = tile_gemm_u8(x, planes, qlut, bits, k, threads, AUTO)
        exact = oracle(x, codes, lut, bits, 8)
        assert torch.isfinite(y).all()
        err = (y.double() - exact).abs()
        assert (err <= _int_bound(x, qlut)).all(), float((err / _int_bound(x, qlut)).max())
        # the integer scheme itself: lo * sum x + scale * (sx * xq) . q, only fp32 rounding apart
        xq, sx = int16_acts(x)
        scheme = qlut.lo.double() * x.double().sum(-1, keepdim=True) + qlut.scale.double() * ((sx * xq).double() @ q.T)
        _tol(y, scheme, x, lut)
        fp32 = tile_gemm_u8(x, planes, qlut, bits, k, threads, FP32)
        _tol(fp32, exact, x, lut)


@needs_avx2
@pytest.mark.parametrize("bits", [3, 4, 8])
def test_int_tiles_agree_with_the_uint8_matvec(bits: int) -> None:
    n, k = 70, 333
    _, luts, planes = random_layer(n, k, 8, seed=bits + 5)
    qlut = quantize_lut(luts[bits])
    x = torch.randn(9, k)
    y = tile_gemm_u8(x, planes, qlut, bits, k, 2, AUTO)
    want = torch.empty(9, n)
    for t0 in range(0, 9, 4):  # the uint8 mat-vec takes up to 4 tokens per pass
        t = min(4, 9 - t0)
        cpu._lib().gemv(planes.data_ptr(), planes.stride(0), n, planes.shape[2], k, qlut.q.data_ptr(), 0, bits,
                        x[t0].data_ptr(), t, k, want[t0].data_ptr(), n, 1, qlut.lo.data_ptr(), qlut.scale.data_ptr())
    err = (y.double() - want.double()).abs()
    assert (err <= _int_bound(x, qlut)).all()


@needs_avx2
def test_int_tiles_do_not_overflow_at_the_largest_products() -> None:
    """q = 255 everywhere and every activation at its block's absmax (xq = 32767): each int32
    lane adds KB / 8 products of 255 * 32767 per block; a wider block or an int16 accumulator
    would wrap."""
    n, k, bits = 6, 2100, 4
    _, _, planes = random_layer(n, k, 8, seed=3)
    qlut = QuantizedLut(torch.full((n, 1 << bits), 255, dtype=torch.uint8), torch.zeros(n), torch.ones(n))
    x = torch.full((3, k), 1.5)
    y = tile_gemm_u8(x, planes, qlut, bits, k, 1, AUTO)
    torch.testing.assert_close(y, torch.full((3, n), 255 * 1.5 * k), rtol=1e-6, atol=0)


def test_portable_cpus_fall_back_to_fp32_tiles() -> None:
    _, luts, planes = random_layer(40, 300, 8, seed=9)
    qlut = quantize_lut(luts[4])
    x = torch.randn(6, 300)
    before = cpu.isa()
    cpu.set_isa("portable")
    try:
        auto, fp32 = (tile_gemm_u8(x, planes, qlut, 4, 300, 2, kind) for kind in (AUTO, FP32))
    finally:
        cpu.set_isa(before)
    assert torch.equal(auto, fp32)


def test_bad_tile_kind_is_refused() -> None:
    _, luts, planes = random_layer(4, 32, 8, seed=0)
    qlut = quantize_lut(luts[3])
    x, y = torch.randn(1, 32), torch.empty(1, 4)
    with pytest.raises(ValueError, match="kind=7"):
        cpu._lib().tile_gemm(planes.data_ptr(), planes.stride(0), 4, 1, 32, qlut.q.data_ptr(), 0, 3, x.data_ptr(),
                             1, 32, y.data_ptr(), 4, 1, qlut.lo.data_ptr(), qlut.scale.data_ptr(), 7)


# -- the engine's prefill on integer tiles ---------------------------------------------------------

# int16 vs the transformers forward, relative L2 of the logits on this random tiny model:
# measured 2.4e-4 (8 bits) .. 9.2e-4 (3 bits); a wrong scale or a dropped block moves them by O(1)
ENGINE_REL = 5e-3


@pytest.fixture(scope="module")
def u8_apm():
    from tests.anyprec.engine.engine_testlib import build_apm, tiny_config

    # 3 query heads over 1 kv head; hidden 300 > KB: two activation blocks, odd tails
    return build_apm(tiny_config("llama", hidden_size=300, num_attention_heads=3, intermediate_size=200),
                     luts="u8")


@needs_avx2
@pytest.mark.parametrize("bits", [3, 4, 5, 6, 7, 8])
def test_engine_prefill_on_int_tiles_is_close_to_fp32_tiles_and_transformers(u8_apm, bits):
    """Every prefill layer call by tiles (tile_rows 1). fp32 tiles equal the transformers
    forward to fp32 rounding; int16 tiles differ from it by the activation rounding only: each
    layer input is off by <= 2^-16 of its block's absmax per column, so the logits move by a
    small multiple of that relative error (ENGINE_REL)."""
    from anyprec.engine import NativeEngine
    from tests.anyprec.engine.engine_testlib import full_logits

    ids = [(13 * i + 5) % 300 for i in range(37)]
    logits = {}
    for kind in ("int16", "fp32"):
        engine = NativeEngine(u8_apm, head="int8w")
        engine.tile_rows, engine.tiles = 1, kind
        logits[kind] = engine.add(ids, bits)[1]
    ref = full_logits(u8_apm, ids, bits)
    torch.testing.assert_close(logits["fp32"], ref, rtol=1e-4, atol=1e-5)
    rel = float((logits["int16"] - ref).norm() / ref.norm())
    assert 0 < rel < ENGINE_REL, rel


def test_engine_tiles_kind_is_checked(u8_apm):
    from anyprec.engine import EngineError, NativeEngine

    engine = NativeEngine(u8_apm, head="int8w")
    assert engine.tiles == "fp32"  # int16 is opt-in (docs/ENGINE.md)
    with pytest.raises(EngineError, match="tiles 'int8' is not one of int16, fp32"):
        engine.tiles = "int8"
