"""Bitplane packing of nested integer codes (format v1 plane layout).

Layout: `planes[p, n, k // 32]` holds, at bit `k % 32` (LSB first), bit `bits - 1 - p` of
`codes[n, k]`: plane 0 is the most significant bit, so the first b planes of a parent
packing are exactly the b-bit child codes (`codes >> (parent - b)`). Words are int32
tensors that are bit-for-bit views of uint32; padding bits past K are 0.
"""

from __future__ import annotations

import numpy as np
import torch

WORD_BITS = 32
MAX_BITS = 8


def words_per_row(in_features: int) -> int:
    """Number of 32-bit words holding one row of `in_features` columns."""
    return (in_features + WORD_BITS - 1) // WORD_BITS


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits={bits} is outside 1..{MAX_BITS}; pick a bit-width in that range")


def pack_bitplanes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack codes uint8[N, K] (values < 2**bits) into planes int32[bits, N, ceil(K/32)]."""
    _check_bits(bits)
    if codes.dim() != 2 or codes.dtype != torch.uint8:
        raise ValueError(
            f"codes must be uint8[N, K], got {codes.dtype}{list(codes.shape)}; "
            "convert with codes.to(torch.uint8)"
        )
    if codes.numel() and int(codes.max()) >= (1 << bits):
        raise ValueError(
            f"codes hold {int(codes.max())}, which does not fit in {bits} bits; "
            "pass the bit-width the codes were made at"
        )
    n, k = codes.shape
    w = words_per_row(k)
    # numpy.packbits with little bit order puts column k at bit k % 8 of byte k // 8, and four
    # little-endian bytes make the word: exactly the layout above, ~20x faster than torch sums.
    padded = np.zeros((n, w * WORD_BITS), dtype=np.uint8)
    padded[:, :k] = codes.cpu().numpy()
    planes = np.empty((bits, n, w), dtype="<i4")
    for p in range(bits):
        bit = (padded >> (bits - 1 - p)) & 1
        planes[p] = np.packbits(bit, axis=1, bitorder="little").view("<i4")
    return torch.from_numpy(planes.astype(np.int32, copy=False)).to(codes.device)


def unpack_bitplanes(planes: torch.Tensor, bits: int, in_features: int) -> torch.Tensor:
    """Rebuild the b-bit codes uint8[N, K] from the first `bits` planes of int32[P, N, W]."""
    _check_bits(bits)
    if planes.dim() != 3 or planes.dtype != torch.int32:
        raise ValueError(
            f"planes must be int32[P, N, W], got {planes.dtype}{list(planes.shape)}"
        )
    if planes.shape[0] < bits:
        raise ValueError(
            f"planes hold {planes.shape[0]} bit-planes but bits={bits} were asked; "
            f"use bits <= {planes.shape[0]}"
        )
    if planes.shape[2] != words_per_row(in_features):
        raise ValueError(
            f"planes have {planes.shape[2]} words per row but in_features={in_features} "
            f"needs {words_per_row(in_features)}; pass the layer's real in_features"
        )
    _, n, w = planes.shape
    words = planes[:bits].to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(WORD_BITS, device=planes.device)
    bitvals = (words.unsqueeze(-1) >> shifts) & 1  # [bits, N, W, 32]
    bitvals = bitvals.reshape(bits, n, w * WORD_BITS)[:, :, :in_features]
    codes = torch.zeros((n, in_features), dtype=torch.int64, device=planes.device)
    for p in range(bits):
        codes |= bitvals[p] << (bits - 1 - p)
    return codes.to(torch.uint8)
