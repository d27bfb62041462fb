"""Exact pack/unpack round-trips and the plane layout of format v1."""

from __future__ import annotations

import pytest
import torch

from anyprec.kernels import pack_bitplanes, unpack_bitplanes, words_per_row

SHAPES = [(1, 1), (3, 31), (5, 32), (7, 33), (17, 95), (16, 128), (9, 1000)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bits", range(1, 9))
def test_round_trip(shape: tuple[int, int], bits: int) -> None:
    gen = torch.Generator().manual_seed(bits * 1000 + shape[1])
    codes = torch.randint(0, 1 << bits, shape, generator=gen, dtype=torch.int64).to(torch.uint8)
    planes = pack_bitplanes(codes, bits)
    assert planes.dtype == torch.int32
    assert planes.shape == (bits, shape[0], words_per_row(shape[1]))
    assert torch.equal(unpack_bitplanes(planes, bits, shape[1]), codes)


@pytest.mark.parametrize("parent", [6, 8])
def test_prefix_planes_give_nested_child_codes(parent: int) -> None:
    codes = torch.randint(0, 1 << parent, (11, 77), dtype=torch.int64).to(torch.uint8)
    planes = pack_bitplanes(codes, parent)
    for b in range(1, parent + 1):
        assert torch.equal(unpack_bitplanes(planes, b, 77), codes >> (parent - b))


def test_layout_msb_plane_first_lsb_column_first() -> None:
    codes = torch.zeros((2, 40), dtype=torch.uint8)
    codes[0, 0] = 0b100  # MSB set -> plane 0, word 0, bit 0
    codes[1, 33] = 0b001  # LSB set -> plane 2, word 1, bit 1
    codes[0, 31] = 0b010  # middle bit -> plane 1, word 0, bit 31 (sign bit of int32)
    planes = pack_bitplanes(codes, 3)
    assert planes[0, 0, 0].item() == 1
    assert planes[2, 1, 1].item() == 2
    assert planes[1, 0, 0].item() == -(2**31)
    assert int((planes != 0).sum()) == 3


def test_padding_bits_are_zero() -> None:
    codes = torch.full((3, 37), 7, dtype=torch.uint8)
    planes = pack_bitplanes(codes, 3)
    assert torch.all(planes[:, :, 1] == (1 << 5) - 1)


def test_errors_name_the_bad_value() -> None:
    codes = torch.full((2, 5), 9, dtype=torch.uint8)
    with pytest.raises(ValueError, match="does not fit in 3 bits"):
        pack_bitplanes(codes, 3)
    with pytest.raises(ValueError, match="bits=9"):
        pack_bitplanes(codes, 9)
    planes = pack_bitplanes(codes, 4)
    with pytest.raises(ValueError, match="bits=5"):
        unpack_bitplanes(planes, 5, 5)
    with pytest.raises(ValueError, match="in_features=40"):
        unpack_bitplanes(planes, 4, 40)
