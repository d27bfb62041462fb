"""AVX2 uint8-LUT kernel (kernels/csrc/ap_lut8_avx2.c) against float64 and integer models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anyprec.kernels import cpu
from anyprec.kernels.bitplanes import pack_bitplanes

pytestmark = pytest.mark.skipif(
    not cpu.is_available() or cpu.best_isa() == "portable", reason="needs the native kernels on an AVX2 CPU"
)

KS = (32, 96, 100, 576, 1536)
TOKENS = (1, 2, 3, 4, 5, 8)
N = 37  # rows: a multiple of nothing the kernel steps by


def _layer(bits: int, k: int, seed: int, n: int = N):
    """(codes uint8[N, K], planes, q uint8[N, 2**b], lo f32[N], scale f32[N])."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << bits, (n, k), generator=gen).to(torch.uint8)
    q = torch.randint(0, 256, (n, 1 << bits), generator=gen).to(torch.uint8)
    lo = (torch.randn(n, generator=gen) * 0.1).half().float()
    scale = (torch.rand(n, generator=gen) * 1e-3 + 1e-4).half().float()
    return codes, pack_bitplanes(codes, bits), q, lo, scale


def _weights64(codes, q, lo, scale) -> np.ndarray:
    """float64 [N, K] = lo + scale * q[n, code[n, k]]."""
    qv = np.take_along_axis(q.numpy().astype(np.float64), codes.numpy().astype(np.int64), axis=1)
    return lo.double().numpy()[:, None] + scale.double().numpy()[:, None] * qv


def _bound(codes, q, lo, scale, xa: np.ndarray) -> np.ndarray:
    """[T, N] sum of |terms| of lo * sum x + scale * sum q x: the scale of fp32 rounding."""
    qv = np.take_along_axis(q.numpy().astype(np.float64), codes.numpy().astype(np.int64), axis=1)
    return np.abs(lo.double().numpy()) * xa.sum(1)[:, None] + scale.double().numpy() * (xa @ qv.T)


def _quantize_model(x: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """(xq int64 [T, K], sx f32 [T, K] per column) as the C quantizer: fp32 max/127, rint(x/sx)."""
    t, k = x.shape
    x32 = x.astype(np.float32)
    xq = np.zeros((t, k), np.int64)
    sx = np.zeros((t, k), np.float32)
    for g0 in range(0, k, group):
        blk = x32[:, g0 : g0 + group]
        top = np.abs(blk).max(1)
        s = (top / np.float32(127)).astype(np.float32)
        safe = np.where(s > 0, s, np.float32(1))
        xq[:, g0 : g0 + group] = np.where(top[:, None] > 0, np.rint(blk / safe[:, None]), 0)
        sx[:, g0 : g0 + group] = s[:, None]
    return xq, sx


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("bits", range(1, 9))
def test_fp32_acts_match_float64(bits: int, k: int) -> None:
    codes, planes, q, lo, scale = _layer(bits, k, seed=bits * 1000 + k)
    w = _weights64(codes, q, lo, scale)
    for t in TOKENS:
        x = torch.randn(t, k, generator=torch.Generator().manual_seed(t))
        y = cpu.gemv_u8(planes, q, lo, scale, x, bits, acts="fp32").double().numpy()
        x64 = x.double().numpy()
        err = np.abs(y - x64 @ w.T)
        assert (err <= 1e-5 * _bound(codes, q, lo, scale, np.abs(x64)) + 1e-6).all(), (bits, k, t, err.max())


@pytest.mark.parametrize("group", (32, 1 << 20))
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("bits", (1, 3, 4, 5, 6, 8))
def test_int8_acts_bit_exact_integer_sums(bits: int, k: int, group: int) -> None:
    """x = xq * 2**-e with max |xq| = 127 per group: the quantization is exact and, with lo = 0
    and scale = 1, every float step is too, so y must equal sum_b 2**-e_b * int_sum_b exactly."""
    codes, planes, q, _, _ = _layer(bits, k, seed=7 * bits + k)
    zero, one = torch.zeros(N), torch.ones(N)
    rng = np.random.default_rng(bits + k)
    span = min(group, k)
    for t in TOKENS:
        xq = rng.integers(-127, 128, size=(t, k))
        exps = rng.integers(0, 3, size=(t, -(-k // span)))
        xq[:, ::span] = 127 * rng.choice((-1, 1), size=xq[:, ::span].shape)  # each group reaches 127
        e = np.repeat(exps, span, axis=1)[:, :k]
        x = torch.from_numpy((xq * 2.0 ** -e).astype(np.float32))
        y = cpu.gemv_u8(planes, q, zero, one, x, bits, acts="int8", act_group=group).double().numpy()
        qv = np.take_along_axis(q.numpy().astype(np.int64), codes.numpy().astype(np.int64), axis=1)
        want = np.zeros((t, N))
        for g0 in range(0, k, span):  # integer sums per group, then the exact power-of-two scale
            ints = xq[:, g0 : g0 + span] @ qv[:, g0 : g0 + span].T
            want += ints * 2.0 ** -exps[:, g0 // span][:, None]
        np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("bits", range(1, 9))
def test_int8_acts_match_quantization_model(bits: int, k: int) -> None:
    codes, planes, q, lo, scale = _layer(bits, k, seed=bits * 31 + k)
    w = _weights64(codes, q, lo, scale)
    for t in TOKENS:
        x = torch.randn(t, k, generator=torch.Generator().manual_seed(100 + t)) * 3
        for group in (32, k):
            y = cpu.gemv_u8(planes, q, lo, scale, x, bits, acts="int8", act_group=group).double().numpy()
            xq, sx = _quantize_model(x.numpy(), 32 if group == 32 else k)
            xhat = xq * sx.astype(np.float64)
            err = np.abs(y - xhat @ w.T)
            assert (err <= 1e-5 * _bound(codes, q, lo, scale, np.abs(xhat)) + 1e-6).all(), (bits, k, t, group)


@pytest.mark.parametrize("k", (100, 1536))
@pytest.mark.parametrize("qval", (0, 255))
@pytest.mark.parametrize("pattern", ("plus", "minus", "alternate"))
def test_int8_extremes_do_not_saturate(k: int, qval: int, pattern: str) -> None:
    """All q = 0 or 255 against x8 = +-127 everywhere: the int16 pair sums reach 32512, the
    most they can; q itself in `vpmaddubsw` would saturate at 2 * 255 * 127 = 64770."""
    bits = 8
    codes, planes, _, _, _ = _layer(bits, k, seed=k)
    q = torch.full((N, 1 << bits), qval, dtype=torch.uint8)
    signs = {"plus": np.ones(k), "minus": -np.ones(k), "alternate": np.resize([1.0, 1.0, -1.0, -1.0], k)}[pattern]
    x = torch.from_numpy(np.tile(127.0 * signs, (2, 1)).astype(np.float32))
    y = cpu.gemv_u8(planes, q, torch.zeros(N), torch.ones(N), x, bits, acts="int8").double().numpy()
    np.testing.assert_array_equal(y, np.full((2, N), qval * 127.0 * signs.sum()))


@pytest.mark.parametrize("acts", ("fp32", "int8"))
def test_zero_scale_rows(acts: str) -> None:
    """Rows of all-equal centroids (scale 0): y = lo * sum x; lo = 0 too gives exact zeros."""
    bits, k = 4, 100
    codes, planes, q, lo, scale = _layer(bits, k, seed=5)
    scale[::2] = 0.0
    lo[::4] = 0.0
    x = torch.randn(3, k, generator=torch.Generator().manual_seed(9))
    y = cpu.gemv_u8(planes, q, lo, scale, x, bits, acts=acts)
    xq, sx = _quantize_model(x.numpy(), 32)
    xs = x.double().numpy().sum(1) if acts == "fp32" else (xq * sx.astype(np.float64)).sum(1)
    assert (y[:, ::4] == 0).all()
    want = lo[2::4].double().numpy()[None, :] * xs[:, None]
    np.testing.assert_allclose(y[:, 2::4].double().numpy(), want, rtol=1e-5, atol=1e-6)


def test_bad_arguments_name_the_problem() -> None:
    codes, planes, q, lo, scale = _layer(3, 64, seed=1)
    x = torch.randn(1, 64)
    with pytest.raises(ValueError, match="acts="):
        cpu.gemv_u8(planes, q, lo, scale, x, 3, acts="int4")
    with pytest.raises(ValueError, match="act_group=48"):
        cpu.gemv_u8(planes, q, lo, scale, x, 3, acts="int8", act_group=48)
    with pytest.raises(ValueError, match="q must be uint8"):
        cpu.gemv_u8(planes, q.float(), lo, scale, x, 3)


# Every word count from 1 to 17 (the builders step by 4 and 8 words, then finish per word),
# one past the 64-word code buffer, and a ragged last word.
CODE_KS = tuple(32 * w for w in range(1, 18)) + (32 * 67 + 5,)


def _exact_codes_case(bits: int, k: int, seed: int):
    """(planes, codes int64 [N, K], x f32 [2, K] of small integers): with table value = code
    every product and sum is an integer below 2**24, so the kernels' y is exactly x @ codes.T."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << bits, (N, k), generator=gen).to(torch.uint8)
    x = torch.randint(-4, 5, (2, k), generator=gen).float()
    return pack_bitplanes(codes, bits), codes.long(), x


@pytest.mark.parametrize("k", CODE_KS)
@pytest.mark.parametrize("bits", range(1, 9))
def test_codes_exact_u8_kernel(bits: int, k: int) -> None:
    """q[n, c] = c, lo = 0, scale = 1: with fp32 activations y is exactly x @ codes.T; with
    int8 activations it matches the quantization model up to fp32 accumulation rounding."""
    planes, codes, x = _exact_codes_case(bits, k, seed=bits * 100 + k)
    q = torch.arange(1 << bits, dtype=torch.uint8).repeat(N, 1)
    want = (x.long() @ codes.T).numpy()
    y = cpu.gemv_u8(planes, q, torch.zeros(N), torch.ones(N), x, bits, acts="fp32")
    np.testing.assert_array_equal(y.numpy(), want.astype(np.float32))
    x8 = x * 31.75  # integers -127..127
    xq, sx = _quantize_model(x8.numpy(), 32)
    y8 = cpu.gemv_u8(planes, q, torch.zeros(N), torch.ones(N), x8, bits, acts="int8").double().numpy()
    want8 = (xq * sx.astype(np.float64)) @ codes.T.double().numpy()
    np.testing.assert_allclose(y8, want8, rtol=1e-6)


@pytest.mark.parametrize("k", CODE_KS)
@pytest.mark.parametrize("bits", range(1, 9))
def test_codes_exact_fp16_kernel(bits: int, k: int) -> None:
    """The fp16-LUT kernel (lut[n, c] = c, exact in fp16) gives exactly x @ codes.T."""
    planes, codes, x = _exact_codes_case(bits, k, seed=bits * 200 + k)
    lut = torch.arange(1 << bits, dtype=torch.float16).repeat(N, 1)
    y = cpu.DecodePlan(planes, lut, bits, k)(x)
    np.testing.assert_array_equal(y.numpy(), (x.long() @ codes.T).numpy().astype(np.float32))
