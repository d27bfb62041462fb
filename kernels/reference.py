"""Reference backend: pure torch, the oracle every other backend is tested against."""

from __future__ import annotations

import torch

from anyprec.kernels.bitplanes import unpack_bitplanes
from anyprec.lutq import QuantizedLut, dequantize_lut

# A layer's LUT at one bit-width, as every backend takes it: float[N, 2**b] (fp32 or fp16),
# or a QuantizedLut (uint8 codes q [N, 2**b] with float32 lo, scale [N]; anyprec/lutq.py).
Lut = torch.Tensor | QuantizedLut


def check_lut(lut: Lut, bits: int, out_features: int) -> None:
    """Raise if `lut` is not a LUT of shape [N, 2**bits] for a layer with N = out_features."""
    want = (out_features, 1 << bits)
    table = lut.q if isinstance(lut, QuantizedLut) else lut
    if table.dim() != 2 or table.shape != want:
        raise ValueError(
            f"lut must be [{out_features}, {1 << bits}] for bits={bits}, got "
            f"{list(table.shape)}; pass the table of that bit-width (lut<b>)"
        )
    if isinstance(lut, QuantizedLut) and (
        lut.q.dtype != torch.uint8 or lut.lo.shape != (out_features,) or lut.scale.shape != (out_features,)
        or lut.lo.dtype != torch.float32 or lut.scale.dtype != torch.float32
    ):
        raise ValueError(f"a uint8 LUT needs q uint8{list(want)} and float32 lo, scale [{out_features}]; "
                         "make it with anyprec.lutq.quantize_lut")


def lut_values(lut: Lut) -> torch.Tensor:
    """The LUT's values as a float tensor [N, 2**b] (uint8 codes: lo + scale * q in fp32)."""
    return dequantize_lut(lut) if isinstance(lut, QuantizedLut) else lut


def dequantize_reference(
    planes: torch.Tensor, lut: Lut, bits: int, in_features: int, dtype: torch.dtype
) -> torch.Tensor:
    """Dense weight [N, K] in `dtype`: W[n, k] = lut[n, code_b(n, k)]."""
    check_lut(lut, bits, planes.shape[1])
    codes = unpack_bitplanes(planes, bits, in_features).to(torch.int64)
    return torch.gather(lut_values(lut).to(dtype), 1, codes)


def matmul_reference(
    x: torch.Tensor,
    planes: torch.Tensor,
    lut: Lut,
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
