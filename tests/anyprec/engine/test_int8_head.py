"""The int8 output head: the quantizer, the kernel against an exact integer model of it on
every kernel family, and the engine's logits with each head mode."""

from __future__ import annotations

import pytest
import torch

from anyprec.engine import EngineError, NativeEngine
from anyprec.engine.head import HEAD_MODES, head_logits, quantize_head_int8
from anyprec.kernels import cpu
from tests.anyprec.engine.engine_testlib import build_apm, tiny_config

pytestmark = pytest.mark.skipif(not cpu.is_available(), reason="native kernels not built")


def reference(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, mode: str) -> torch.Tensor:
    """What the kernel computes, in torch: int8 activations are rounded exactly as in C
    (x / sx, half to even) and the integer dot products are exact in float64."""
    if mode == "int8w":
        return (x.double() @ q.double().T).float() * scale
    sx = x.abs().amax(dim=1, keepdim=True) / 127.0
    x8 = torch.round(x / sx)
    return (x8.double() @ q.double().T).float() * sx * scale


def test_quantizer_is_per_row_symmetric_and_deterministic():
    w = (torch.randn(50, 96) * torch.linspace(0.01, 2.0, 50)[:, None]).half()
    w[7] = 0
    q, scale = quantize_head_int8(w)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and q.shape == w.shape
    assert int(q.abs().max()) == 127 and scale[7] == 0 and not q[7].any()
    nonzero = torch.ones(50, dtype=torch.bool)
    nonzero[7] = False
    assert (q[nonzero].abs().amax(dim=1) == 127).all()
    err = (q.float() * scale[:, None] - w.float()).abs()
    assert (err <= scale[:, None] / 2 + 1e-7).all()
    q2, scale2 = quantize_head_int8(w)
    assert torch.equal(q, q2) and torch.equal(scale, scale2)


@pytest.mark.parametrize("k", [96, 100, 576])
@pytest.mark.parametrize("mode", ["int8w", "int8"])
def test_kernel_matches_its_integer_model(family, mode, k):
    gen = torch.Generator().manual_seed(k)
    w = (torch.randn(300, k, generator=gen) * 0.05).half()
    q, scale = quantize_head_int8(w)
    # int8: integer sums, exact; int8w: fp32 sums in another order than float64's
    tol = dict(rtol=1e-6, atol=1e-7) if mode == "int8" else dict(rtol=1e-5, atol=1e-5)
    for tokens in (1, 3, 8, 11):
        x = torch.randn(tokens, k, generator=gen)
        got = head_logits(x, mode, q=q, scale=scale, threads=2)
        torch.testing.assert_close(got, reference(x, q, scale, mode), **tol)


def test_fp16_mode_is_the_exact_head(family):
    w = (torch.randn(200, 80) * 0.05).half()
    x = torch.randn(5, 80)
    torch.testing.assert_close(head_logits(x, "fp16", weight_f16=w), x @ w.float().T, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def apm():  # hidden 96: a multiple of 32, so the AVX2 int8 x int8 loop runs
    return build_apm(tiny_config("llama", hidden_size=96, num_attention_heads=3))


@pytest.mark.parametrize("mode", HEAD_MODES)
def test_engine_logits_are_its_head_applied_to_the_final_hidden_state(apm, mode):
    engine = NativeEngine(apm, head=mode)
    ids = [5, 17, 42, 9, 33, 2]
    q, scale = quantize_head_int8(apm.model.lm_head.weight_f16)
    for bits in (3, 8):
        slot, logits = engine.add(ids, bits)
        step = engine.step([slot], [77], [bits])[0]
        engine.release(slot)
        with torch.inference_mode(), apm.precision(bits):
            hidden = apm.model.model(torch.tensor([ids + [77]])).last_hidden_state[0, -2:]
        want = head_logits(hidden, mode, apm.model.lm_head.weight_f16, q, scale)
        # the hidden states agree to fp32 rounding; an int8 activation may round the other way
        tol = dict(rtol=1e-4, atol=1e-5) if mode != "int8" else dict(rtol=1e-3, atol=2e-3)
        torch.testing.assert_close(logits, want[0], **tol)
        torch.testing.assert_close(step, want[1], **tol)
    if mode != "fp16":
        assert all(t is not apm.model.lm_head.weight_f16 for t in engine._keep)


def test_unknown_head_mode_is_refused(apm):
    with pytest.raises(EngineError, match="head 'int4' is not one of fp16, int8w, int8"):
        NativeEngine(apm, head="int4")
