"""The native engine's opt-in int8 activations (acts="int8"): at 4..8 bits every layer equals
the uint8-LUT kernel binding with int8 activations per 32 columns, 3-bit calls and prefill
tiles stay fp32, the logits stay close to the fp32 engine's, and bad values are refused."""

from __future__ import annotations

import pytest
import torch

from anyprec.engine import EngineError, NativeEngine, open_engine
from anyprec.kernels import cpu
from anyprec.runtime import AnyPrecisionLinear
from tests.anyprec.engine.engine_testlib import build_apm, full_logits, tiny_config

pytestmark = pytest.mark.skipif(not cpu.is_available() or cpu.best_isa() == "portable",
                                reason="the uint8-LUT kernel needs the native build on an AVX2 CPU")
PROMPT = [5, 17, 42, 9, 33, 2, 100, 250, 7]  # 9 rows: mat-vec groups of 8 + 1 (no tiles)
# engine vs reference: both quantize the same activations per 32 columns, but the engine's
# fp32 attention / norms round differently from torch's, and a 1e-7 change of x can move one
# int8 rounding (one step = max|x|/127 of the block) of one column; measured max |diff| 2e-7
# on logits of ~0.5, while the fp32 engine differs from this reference by 7e-3..1e-2
REF_TOL = dict(rtol=1e-4, atol=1e-4)
# int8 vs fp32 activations on this random tiny model: measured 1.0-1.7% relative L2 of the
# logits at 4..8 bits; 5% still fails a wrong scale or a dropped block
REL_BOUND = 0.05


@pytest.fixture(scope="module")
def apm():
    return build_apm(tiny_config("llama", intermediate_size=160), luts="u8")


def _kernel_forward(self, x):
    """AnyPrecisionLinear.forward through the kernel binding with int8 activations from 4 bits."""
    bits = self.state.current
    lut = self.lut(bits)
    flat = x.reshape(-1, x.shape[-1]).float()
    acts = "int8" if bits >= 4 else "fp32"
    rows = [cpu.gemv_u8(self.planes, lut.q, lut.lo, lut.scale, flat[i:i + 8], bits, acts=acts)
            for i in range(0, flat.shape[0], 8)]
    y = torch.cat(rows).reshape(*x.shape[:-1], -1)
    return y if self.bias is None else y + self.bias


@pytest.mark.parametrize("bits", [4, 6, 8])
def test_engine_equals_the_kernel_binding_with_int8_acts(apm, bits, monkeypatch):
    engine = NativeEngine(apm, head="int8w", acts="int8")
    slot, logits = engine.add(PROMPT, bits)
    seq = list(PROMPT)
    steps = [engine.step([slot], [token], [bits])[0] for token in (3, 99)]
    seq_logits = []
    monkeypatch.setattr(AnyPrecisionLinear, "forward", _kernel_forward)
    for n in (0, 1, 2):
        seq_logits.append(full_logits(apm, seq + [3, 99][:n], bits))
    for ours, ref in zip([logits, *steps], seq_logits):
        torch.testing.assert_close(ours, ref, **REF_TOL)


@pytest.mark.parametrize("bits", [4, 8])
def test_int8_logits_are_close_to_fp32_but_not_equal(apm, bits):
    out = {}
    for acts in ("fp32", "int8"):
        engine = NativeEngine(apm, head="int8w", acts=acts)
        slot, first = engine.add(PROMPT, bits)
        out[acts] = torch.stack([first, engine.step([slot], [3], [bits])[0]])
    rel = (out["int8"] - out["fp32"]).norm() / out["fp32"].norm()
    assert 0 < rel < REL_BOUND, rel


def test_three_bit_calls_and_tiles_stay_fp32(apm):
    fp32, int8 = (NativeEngine(apm, head="int8w", acts=a) for a in ("fp32", "int8"))
    assert torch.equal(fp32.add(PROMPT, 3)[1], int8.add(PROMPT, 3)[1])
    fp32.tile_rows = int8.tile_rows = 1  # every prefill layer call by tiles
    assert torch.equal(fp32.add(PROMPT, 6)[1], int8.add(PROMPT, 6)[1])


@pytest.mark.parametrize("batch_bits", [(3, 5, 8), (8, 3, 5, 3, 6, 4, 7, 8)])
def test_mixed_batch_rows_match_their_single_runs(apm, batch_bits):
    """Each row's int8 path (4+ bits) and fp32 path (3 bits) in a batch of several widths must
    equal the row's single run."""
    engine = NativeEngine(apm, head="int8w", acts="int8", max_batch=len(batch_bits))
    slots = [engine.add(PROMPT, b)[0] for b in batch_bits]
    batch = engine.step(slots, [3] * len(batch_bits), list(batch_bits))
    for i, b in enumerate(batch_bits):
        single = NativeEngine(apm, head="int8w", acts="int8")
        slot = single.add(PROMPT, b)[0]
        torch.testing.assert_close(batch[i], single.step([slot], [3], [b])[0], rtol=1e-5, atol=1e-5)


def test_default_is_fp32_and_bad_values_are_refused(apm):
    assert NativeEngine(apm).acts == "fp32"
    assert open_engine(apm, kind="native").acts == "fp32"
    with pytest.raises(EngineError, match="acts 'int4' is not one of fp32, int8"):
        open_engine(apm, kind="native", acts="int4")
    with pytest.raises(EngineError, match="needs the native engine"):
        open_engine(apm, kind="transformers", acts="int8")


def test_int8_acts_need_a_u8_load():
    fp16 = build_apm(tiny_config("llama"), luts="fp16")
    with pytest.raises(EngineError, match="luts='u8'"):
        NativeEngine(fp16, head="int8w", acts="int8")
