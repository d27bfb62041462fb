"""The transformers fallback engine: slots, per-slot precision, and logits equal to a full forward."""

from __future__ import annotations

import pytest
import torch

from anyprec.engine import EngineError, TransformersEngine
from anyprec.runtime import load_anyprec


@pytest.fixture(scope="module")
def apm(tiny_artifact):
    return load_anyprec(tiny_artifact)


def _full_logits(apm, ids: list[int], bits: int) -> torch.Tensor:
    with torch.inference_mode():
        return apm(input_ids=torch.tensor([ids]), precision=bits).logits[0].float()


def test_prefill_and_steps_match_full_forward_per_slot_precision(apm):
    engine = TransformersEngine(apm, max_batch=4)
    prompts = {3: [5, 17, 42, 9], 8: [7, 7, 100, 3, 250], 5: [11]}
    slots, seqs = {}, {}
    for bits, ids in prompts.items():
        slot, logits = engine.add(ids, bits)
        torch.testing.assert_close(logits, _full_logits(apm, ids, bits)[-1], rtol=1e-4, atol=1e-4)
        slots[bits], seqs[bits] = slot, list(ids)
    for step in range(3):
        order = sorted(slots)
        tokens = [(31 * step + b) % 300 for b in order]
        out = engine.step([slots[b] for b in order], tokens, order)
        for row, b, tok in zip(out, order, tokens):
            seqs[b].append(tok)
            torch.testing.assert_close(row, _full_logits(apm, seqs[b], b)[-1], rtol=1e-4, atol=1e-4)
    assert engine.length(slots[3]) == len(seqs[3])


def test_slots_are_reused_and_errors_are_clear(apm):
    engine = TransformersEngine(apm, max_batch=1)
    slot, _ = engine.add([1, 2, 3], 4)
    with pytest.raises(EngineError, match="slots are in use"):
        engine.add([4], 4)
    engine.release(slot)
    assert engine.add([4], 4)[0] == slot
    with pytest.raises(EngineError, match="empty"):
        TransformersEngine(apm).add([], 4)
    with pytest.raises(EngineError, match="context"):
        TransformersEngine(apm).add([1] * engine.context_length, 4)
    with pytest.raises(EngineError, match="not in use"):
        engine.step([3], [1], [4])
