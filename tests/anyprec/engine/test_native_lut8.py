"""The native engine over a luts="u8" load (uint8 LUTs, int8 head and tied embedding) against
the transformers path on the same runtime: the engine reads the runtime's own tensors."""

from __future__ import annotations

import pytest
import torch

from anyprec.engine import EngineError, NativeEngine
from anyprec.int8_head import Int8Embedding, Int8Head
from anyprec.kernels import cpu
from tests.anyprec.engine.engine_testlib import build_apm, full_logits, tiny_config

pytestmark = pytest.mark.skipif(not cpu.is_available(), reason="native CPU kernels not built")
TOL = dict(rtol=1e-4, atol=1e-4)
PROMPT = [5, 17, 42, 9, 33, 2, 100, 250, 7]


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def apm(request):
    return build_apm(tiny_config("llama", tie_word_embeddings=request.param), luts="u8")


def test_the_load_holds_the_lean_form(apm):
    model = apm.model
    assert isinstance(model.lm_head, Int8Head)
    tied = model.config.tie_word_embeddings
    assert isinstance(model.model.embed_tokens, Int8Embedding) == tied
    if tied:
        assert model.model.embed_tokens.table is model.lm_head.table


@pytest.mark.parametrize("bits", [3, 6, 8])
def test_prefill_and_steps_match_transformers(apm, bits):
    engine = NativeEngine(apm, head="int8w")
    slot, logits = engine.add(PROMPT, bits)
    torch.testing.assert_close(logits, full_logits(apm, PROMPT, bits), **TOL)
    seq = list(PROMPT)
    for token in (3, 99, 250):
        seq.append(token)
        out = engine.step([slot], [token], [bits])
        torch.testing.assert_close(out[0], full_logits(apm, seq, bits), **TOL)


def test_engine_reads_the_runtime_tables_without_copies(apm):
    engine = NativeEngine(apm, head="int8w")
    table = apm.model.lm_head.table
    assert any(t is table.q for t in engine._keep) and any(t is table.scale for t in engine._keep)
    layer = apm.model.model.layers[0].self_attn.q_proj
    assert any(t is layer.lut(4).q for t in engine._keep)


def test_fp16_head_needs_an_fp16_load(apm):
    with pytest.raises(EngineError, match="luts='fp16'"):
        NativeEngine(apm, head="fp16")


@pytest.mark.parametrize("batch_bits", [
    [8, 3, 5, 3, 6, 4, 7, 8],             # six widths
    [4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4],    # one width, more rows than one group of 8
    [3, 8, 5, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4, 6, 7, 8],  # 16 rows, the engine's most
])
def test_mixed_batch_rows_equal_their_single_runs(apm, batch_bits):
    """Every row of a batch over uint8 LUTs (the widths' groups sharing one pass over the rows)
    equals its sequence decoded alone and the transformers path."""
    prompts = [PROMPT[: 2 + i % 7] for i in range(len(batch_bits))]
    engine = NativeEngine(apm, max_batch=len(batch_bits), head="int8w")
    slots = [engine.add(p, b)[0] for p, b in zip(prompts, batch_bits)]
    tokens = [(11 * i + 3) % 200 for i in range(len(batch_bits))]
    out = engine.step(slots, tokens, batch_bits)
    for i, (p, b) in enumerate(zip(prompts, batch_bits)):
        single = NativeEngine(apm, max_batch=1, head="int8w")
        slot = single.add(p, b)[0]
        torch.testing.assert_close(out[i], single.step([slot], [tokens[i]], [b])[0], **TOL)
        torch.testing.assert_close(out[i], full_logits(apm, [*p, tokens[i]], b), **TOL)
