"""Reference backend: pure torch, the oracle every other backend is tested against."""

from __future__ import annotations

import torch

from anyprec.kernels.bitplanes import unpack_bitplanes


def check_lut(lut: torch.Tensor, bits: int, out_features: int) -> None:
    """Raise if `lut` is not float[N, 2**bits] for a layer with N = out_features."""
    if lut.dim() != 2 or lut.shape != (out_features, 1 << bits):
        raise ValueError(
            f"lut must be float[{out_features}, {1 << bits}] for bits={bits}, got "
            f"{list(lut.shape)}; pass the table of that bit-width (lut<b>)"
        )


def dequantize_reference(
    planes: torch.Tensor, lut: torch.Tensor, bits: int, in_features: int, dtype: torch.dtype
) -> torch.Tensor:
    """Dense weight [N, K] in `dtype`: W[n, k] = lut[n, code_b(n, k)]."""
    check_lut(lut, bits, planes.shape[1])
    codes = unpack_bitplanes(planes, bits, in_features).to(torch.int64)
    return torch.gather(lut.to(dtype), 1, codes)


def matmul_reference(
    x: torch.Tensor,
    planes: torch.Tensor,
    lut: torch.Tensor,
    bits: int,
    in_features: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """y[..., N] = x[..., K] @ W.T + bias, with W dequantized in x's dtype."""
    if x.shape[-1] != in_features:
        raise ValueError(
            f"x has {x.shape[-1]} features in its last dim but the layer takes {in_features}"
        )
    weight = dequantize_reference(planes, lut, bits, in_features, x.dtype)
    y = x @ weight.T
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y
