"""LUTs as 8-bit codes on a uniform grid per row: value = lo + scale * q.

A b-bit LUT row holds 2**b centroids; storing each as one byte on the grid from the row's
minimum to its maximum halves the LUT bytes (and quarters them against fp32) for +0.1..0.6%
perplexity (docs/QUALITY.md). `lo` and `scale` are rounded to fp16 so the artifact can store
them in 2 bytes each and every reader reconstructs the same float32 values. This module is
the one definition of the scheme: packing, loading and every kernel follow it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

LEVELS = 255  # q in [0, 255]


class QuantizedLut(NamedTuple):
    """q uint8 [N, 2**b]; lo, scale float32 [N] (fp16-representable): lut ~= lo + scale * q."""

    q: torch.Tensor
    lo: torch.Tensor
    scale: torch.Tensor


def quantize_lut(lut: torch.Tensor) -> QuantizedLut:
    """Quantize LUT rows float [N, 2**b] (any float dtype) to `QuantizedLut`.

    Deterministic: lo = fp16(min), scale = fp16((max - lo) / 255), q = round-half-even of
    (v - lo) / scale clamped to [0, 255]; a row whose entries are all equal gets scale 0, q 0.
    Re-quantizing `dequantize_lut` of a result gives the same q, lo and scale.
    """
    if lut.dim() != 2:
        raise ValueError(f"a LUT must be 2-D [rows, 2**bits], got shape {tuple(lut.shape)}")
    v = lut.detach().float()
    lo = v.amin(dim=1).half().float()
    scale = ((v.amax(dim=1) - lo) / LEVELS).half().float()
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round((v - lo[:, None]) / safe[:, None]).clamp_(0, LEVELS)
    q = torch.where(scale[:, None] > 0, q, torch.zeros_like(q))
    return QuantizedLut(q.to(torch.uint8).contiguous(), lo.contiguous(), scale.contiguous())


def dequantize_lut(qlut: QuantizedLut) -> torch.Tensor:
    """float32 [N, 2**b] = lo + scale * q (each product and sum rounded once, as the kernels do)."""
    return qlut.lo[:, None] + qlut.scale[:, None] * qlut.q.float()
