"""The engine's blocked attention (kernels/csrc/ap_attention.c: one slot's rows attend in
blocks per kv head, AVX2 score and value tiles) against the transformers forward and the
portable C path: every prompt length 1..130, prompts split into chunks that share a slot,
grouped-query heads, head sizes that hit each tile edge, decode steps over the cache."""

from __future__ import annotations

import pytest
import torch

from anyprec.engine import NativeEngine, native
from anyprec.kernels import cpu
from tests.anyprec.engine.engine_testlib import build_apm, tiny_config

pytestmark = pytest.mark.skipif(not cpu.is_available(), reason="native CPU kernels not built")

TOL = dict(rtol=1e-4, atol=1e-5)
BITS = 4
LONG = 130
CONFIGS = {  # head_dim 16 (G = 3), 24 (one 8-column value chunk), 20 (not a multiple of 8: portable C)
    "gqa_d16": ("llama", dict(hidden_size=96, num_attention_heads=6, num_key_value_heads=2)),
    "d24": ("qwen2", dict(hidden_size=72, num_attention_heads=3, num_key_value_heads=1)),
    "d20": ("llama", dict(hidden_size=60, num_attention_heads=3, num_key_value_heads=3)),
}
IDS = [(29 * i + 11) % 300 for i in range(LONG)]


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def apm(request):
    kind, extra = CONFIGS[request.param]
    return build_apm(tiny_config(kind, max_position_embeddings=192, **extra))


@pytest.fixture(scope="module")
def reference(apm):
    """transformers' logits at every position of IDS (causal: position i is the prompt IDS[:i + 1])."""
    with torch.inference_mode():
        return apm(input_ids=torch.tensor([IDS]), precision=BITS).logits[0].float()


def test_every_prompt_length_1_to_130(apm, reference):
    engine = NativeEngine(apm, head="fp16", threads=1)  # 130 small calls: no thread start-up per layer
    for n in range(1, LONG + 1):
        slot, logits = engine.add(IDS[:n], BITS)
        torch.testing.assert_close(logits, reference[n - 1], **TOL, msg=lambda m: f"prompt of {n} tokens: {m}")
        engine.release(slot)


@pytest.mark.parametrize("chunk", [5, 48])
def test_chunks_sharing_a_slot_then_decode(apm, reference, chunk, monkeypatch):
    """Later chunks attend to the keys earlier chunks wrote; the decode steps after them too."""
    monkeypatch.setattr(native, "PREFILL_CHUNK", chunk)
    engine = NativeEngine(apm, head="fp16")
    torch.testing.assert_close(engine.prompt_logits(IDS[:100], BITS), reference[:100], **TOL)
    slot, _ = engine.add(IDS[:100], BITS)
    for i in range(100, 104):
        torch.testing.assert_close(engine.step([slot], [IDS[i]], [BITS])[0], reference[i], **TOL)


def test_batch_of_slots_attends_each_to_its_own_cache(apm, reference):
    """Rows of different slots in one step never share a block."""
    engine = NativeEngine(apm, head="fp16", max_batch=4)
    lengths = [7, 1, 33, 64]
    slots = [engine.add(IDS[:n], BITS)[0] for n in lengths]
    out = engine.step(slots, [IDS[n] for n in lengths], [BITS] * len(slots))
    for row, n in zip(out, lengths):
        torch.testing.assert_close(row, reference[n], **TOL)


@pytest.mark.skipif(cpu.is_available() and cpu.best_isa() == "portable", reason="no AVX2 on this CPU")
def test_avx2_attention_equals_the_portable_path(apm):
    before = cpu.isa()
    try:
        cpu.set_isa("portable")
        portable = NativeEngine(apm, head="fp16").prompt_logits(IDS[:77], BITS)
    finally:
        cpu.set_isa(before)
    torch.testing.assert_close(NativeEngine(apm, head="fp16").prompt_logits(IDS[:77], BITS), portable, **TOL)
