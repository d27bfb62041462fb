"""The native engine on the embedded default model: prefill logits and 32 greedy tokens
equal to transformers at every bit-width. Slow; skipped when the artifact is absent
(path: $ANYPREC_ENGINE_ARTIFACT, default artifacts/smollm2-135m/packed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from anyprec.engine import NativeEngine, greedy
from tests.anyprec.engine.engine_testlib import assert_same_greedy, full_logits, greedy_reference

ARTIFACT = Path(os.environ.get("ANYPREC_ENGINE_ARTIFACT", "artifacts/smollm2-135m/packed"))
PROMPT = "The history of the city begins"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (ARTIFACT / "manifest.json").exists(), reason=f"no packed artifact at {ARTIFACT}"),
]


@pytest.fixture(scope="module")
def apm():
    from anyprec.runtime import load_anyprec

    return load_anyprec(ARTIFACT, luts="fp16")  # the exact fp16 head these tests compare


@pytest.mark.timeout(1800)  # transformers' generate: seconds on a quiet machine, minutes on a busy one
@pytest.mark.parametrize("bits", [3, 4, 5, 6, 7, 8])
def test_default_model_logits_and_greedy_tokens_match_transformers(apm, bits):
    engine = NativeEngine(apm, max_batch=1, head="fp16")
    ids = apm.tokenizer(PROMPT).input_ids
    slot, logits = engine.add(ids, bits)
    engine.release(slot)
    torch.testing.assert_close(logits, full_logits(apm, ids, bits), rtol=1e-4, atol=2e-3)
    ours = greedy(engine, ids, bits, 32)
    assert_same_greedy(apm, ids, bits, ours, greedy_reference(apm, ids, bits, 32), tie=2e-3)
