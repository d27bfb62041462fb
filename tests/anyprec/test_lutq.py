import pytest
import torch

from anyprec.lutq import QuantizedLut, dequantize_lut, quantize_lut


@pytest.mark.parametrize("bits", [1, 3, 8])
def test_error_is_within_half_a_step(bits):
    lut = torch.sort(torch.randn(64, 2**bits), dim=1).values.half()
    qlut = quantize_lut(lut)
    assert qlut.q.dtype == torch.uint8 and qlut.q.shape == lut.shape
    err = (dequantize_lut(qlut) - lut.float()).abs()
    # lo and scale are fp16-rounded, so allow the grid's half step plus the rounding of lo/scale
    bound = qlut.scale[:, None] * 0.5 + 255 * qlut.scale[:, None] * 2**-10 + qlut.lo.abs()[:, None] * 2**-11
    assert bool((err <= bound + 1e-7).all())


def test_requantizing_is_idempotent():
    qlut = quantize_lut(torch.randn(32, 16))
    again = quantize_lut(dequantize_lut(qlut))
    for a, b in zip(qlut, again):
        assert torch.equal(a, b)


def test_constant_row_has_zero_scale():
    qlut = quantize_lut(torch.full((2, 8), 0.25))
    assert torch.equal(qlut.scale, torch.zeros(2)) and torch.equal(qlut.q, torch.zeros(2, 8, dtype=torch.uint8))
    assert torch.equal(dequantize_lut(qlut), torch.full((2, 8), 0.25))


def test_rejects_a_flat_lut():
    with pytest.raises(ValueError, match="2-D"):
        quantize_lut(torch.zeros(8))
    assert isinstance(quantize_lut(torch.zeros(1, 2)), QuantizedLut)
