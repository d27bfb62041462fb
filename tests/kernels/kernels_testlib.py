"""Random packed layers and the exact oracle used by every backend test."""

from __future__ import annotations

import torch

from anyprec.kernels import pack_bitplanes

ODD_SHAPES = [(1, 1), (7, 33), (17, 95), (13, 64), (33, 257), (5, 1000)]


def random_layer(
    n: int, k: int, parent: int, seed: int
) -> tuple[torch.Tensor, dict[int, torch.Tensor], torch.Tensor]:
    """(codes uint8[N,K] at parent bits, luts {b: f32[N, 2**b]} sorted, planes int32)."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << parent, (n, k), generator=gen, dtype=torch.int64)
    luts = {
        b: torch.sort(torch.randn(n, 1 << b, generator=gen), dim=1).values
        for b in range(1, parent + 1)
    }
    return codes.to(torch.uint8), luts, pack_bitplanes(codes.to(torch.uint8), parent)


def oracle(x: torch.Tensor, codes: torch.Tensor, lut: torch.Tensor, bits: int, parent: int) -> torch.Tensor:
    """x @ W.T in float64 from the unpacked codes (independent of the planes)."""
    child = (codes.to(torch.int64) >> (parent - bits))
    weight = torch.gather(lut.double(), 1, child)
    return x.double() @ weight.T
