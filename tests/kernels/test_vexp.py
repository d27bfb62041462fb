"""The engine's AVX2 expf (kernels/csrc/ap_vexp.c, used by the SiLU and the attention
softmax) returns the C library's expf bits exactly: random values over the whole range,
a dense grid around 0, the table's edges, overflow, underflow and special values."""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

import pytest
import torch

from anyprec.kernels import cpu

pytestmark = [
    pytest.mark.skipif(not cpu.is_available() or cpu.best_isa() == "portable", reason="needs the AVX2 kernels"),
    pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the AVX2 exp follows glibc's expf"),
]


def _libm_expf():
    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    libm.expf.restype, libm.expf.argtypes = ctypes.c_float, [ctypes.c_float]
    return libm.expf


def test_vexp_equals_expf_bit_for_bit() -> None:
    gen = torch.Generator().manual_seed(0)
    special = [0.0, -0.0, 88.0, -88.0, 87.99, 88.72, 88.73, -103.0, -103.97, -104.0, 1e-30, -1e-30,
               float("inf"), float("-inf"), float("nan")]
    x = torch.cat([torch.randn(20000, generator=gen) * 30, torch.linspace(-2, 2, 8001),
                   torch.arange(-64, 65) * (2.0 ** -5) * 0.6931471805599453,  # k / 32 * ln 2: table edges
                   torch.tensor(special)]).float()
    y = x.clone()
    cpu._lib().vexp(y.data_ptr(), y.numel())
    expf = _libm_expf()
    want = torch.tensor([expf(float(v)) for v in x], dtype=torch.float32)
    differ = (y.view(torch.int32) != want.view(torch.int32)).nonzero().flatten()
    assert differ.numel() == 0, f"{differ.numel()} values differ, first x={float(x[differ[0]])!r}"
