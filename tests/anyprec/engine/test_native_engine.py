"""The native engine against the transformers path: logits to fp32 tolerance at every
bit-width, prefill and 1..16 decode steps, mixed-precision batches, greedy generation,
on tiny Llama / Mistral / Qwen2 configs with odd head counts and GQA."""

from __future__ import annotations

import pytest
import torch

from anyprec.engine import EngineError, NativeEngine, TransformersEngine, greedy, native, open_engine
from anyprec.kernels import cpu
from tests.anyprec.engine.engine_testlib import (
    BITS, assert_same_greedy, build_apm, full_logits, greedy_reference, tiny_config,
)

TOL = dict(rtol=1e-4, atol=1e-5)
ARCHS = {
    "llama": {},
    "mistral": {"sliding_window": 96, "num_attention_heads": 5, "num_key_value_heads": 5},
    "qwen2": {"num_attention_heads": 3, "num_key_value_heads": 1, "hidden_size": 96},
}
PROMPT = [5, 17, 42, 9, 33, 2, 100, 250, 7]


@pytest.fixture(scope="module", params=sorted(ARCHS))
def apm(request):
    return build_apm(tiny_config(request.param, **ARCHS[request.param]))


def test_prefill_and_16_steps_match_transformers_at_every_bit_width(apm):
    engine = NativeEngine(apm, head="fp16")
    for bits in BITS:
        slot, logits = engine.add(PROMPT, bits)
        torch.testing.assert_close(logits, full_logits(apm, PROMPT, bits), **TOL)
        seq = list(PROMPT)
        for i in range(1, 17):
            token = (37 * i + bits) % 300
            seq.append(token)
            out = engine.step([slot], [token], [bits])
            if i in (1, 4, 16):  # a full forward over the whole sequence: the cache-free oracle
                torch.testing.assert_close(out[0], full_logits(apm, seq, bits), **TOL)
        assert engine.length(slot) == len(seq)
        engine.release(slot)


def test_steps_match_the_transformers_engine(apm):
    engine, oracle = NativeEngine(apm, head="fp16"), TransformersEngine(apm)
    slot, logits = engine.add(PROMPT, 5)
    ref_slot, ref = oracle.add(PROMPT, 5)
    torch.testing.assert_close(logits, ref, **TOL)
    for token in (3, 99, 250):
        torch.testing.assert_close(engine.step([slot], [token], [5]), oracle.step([ref_slot], [token], [5]), **TOL)


def test_mixed_precision_batch_rows_equal_their_single_runs(apm):
    batch_bits = [8, 3, 5, 3, 6, 4, 7, 8]  # unsorted, repeated: the engine groups them
    prompts = [PROMPT[: 2 + i] for i in range(len(batch_bits))]
    engine = NativeEngine(apm, max_batch=len(batch_bits), head="fp16")
    slots = [engine.add(p, b)[0] for p, b in zip(prompts, batch_bits)]
    singles = []
    for p, b in zip(prompts, batch_bits):
        single = NativeEngine(apm, max_batch=1, head="fp16")
        singles.append((single, single.add(p, b)[0]))
    for step in range(5):
        tokens = [(11 * step + 3 * i) % 300 for i in range(len(slots))]
        out = engine.step(slots, tokens, batch_bits)
        for i, (single, slot) in enumerate(singles):
            torch.testing.assert_close(out[i], single.step([slot], [tokens[i]], [batch_bits[i]])[0], **TOL)
    # a subset of slots, in another order
    order = [5, 0, 2]
    out = engine.step([slots[i] for i in order], [1, 2, 3], [batch_bits[i] for i in order])
    for row, i, tok in zip(out, order, [1, 2, 3]):
        single, slot = singles[i]
        torch.testing.assert_close(row, single.step([slot], [tok], [batch_bits[i]])[0], **TOL)


def test_long_prompt_in_chunks_and_growing_cache(apm, monkeypatch):
    monkeypatch.setattr(native, "PREFILL_CHUNK", 16)
    monkeypatch.setattr(native, "FIRST_CAPACITY", 8)
    ids = [(7 * i) % 300 for i in range(70)]
    engine = NativeEngine(apm, head="fp16")
    slot, logits = engine.add(ids, 4)
    torch.testing.assert_close(logits, full_logits(apm, ids, 4), **TOL)
    out = engine.step([slot], [12], [4])
    torch.testing.assert_close(out[0], full_logits(apm, ids + [12], 4), **TOL)


def test_greedy_generation_equals_transformers_generate(apm):
    engine = NativeEngine(apm, head="fp16")
    for bits in (3, 5, 8) if apm.model.config.model_type == "llama" else (4,):
        ours = greedy(engine, PROMPT, bits, 32)
        assert_same_greedy(apm, PROMPT, bits, ours, greedy_reference(apm, PROMPT, bits, 32))


def test_errors_are_clear(apm):
    engine = NativeEngine(apm, max_batch=2, head="fp16")
    slot, _ = engine.add([1, 2], 3)
    with pytest.raises(EngineError, match="not loaded"):
        engine.step([slot], [1], [2])
    with pytest.raises(EngineError, match="outside the vocabulary"):
        engine.step([slot], [10_000], [3])
    with pytest.raises(EngineError, match="twice"):
        engine.step([slot, slot], [1, 1], [3, 3])
    with pytest.raises(EngineError, match="not in use"):
        engine.step([1], [1], [3])
    with pytest.raises(EngineError, match="empty"):
        engine.add([], 3)
    with pytest.raises(EngineError, match="context"):
        engine.add([1] * engine.context_length, 3)
    engine.add([1], 3)
    with pytest.raises(EngineError, match="slots are in use"):
        engine.add([1], 3)
    assert engine.length(slot) == 2  # failed calls left the slot as it was
    full = NativeEngine(apm, max_batch=1, head="fp16")
    s, _ = full.add([1] * (full.context_length - 1), 3)
    full.step([s], [1], [3])
    with pytest.raises(EngineError, match="full"):
        full.step([s], [1], [3])


def test_open_engine_picks_native_and_falls_back():
    apm = build_apm(tiny_config("llama"))
    assert isinstance(open_engine(apm), NativeEngine)
    assert isinstance(open_engine(apm, kind="transformers"), TransformersEngine)
    other = build_apm(tiny_config("llama", hidden_act="gelu"))
    assert isinstance(open_engine(other), TransformersEngine)
    with pytest.raises(EngineError, match="hidden_act"):
        open_engine(other, kind="native")
    with pytest.raises(EngineError, match="kind"):
        open_engine(apm, kind="fast")


def test_mixed_batch_on_layers_split_over_threads():
    """Layers above the one-thread size: the grouped pass is shared by OpenMP threads."""
    apm = build_apm(tiny_config("llama", hidden_size=320, intermediate_size=544, num_hidden_layers=1))
    bits = [3, 8, 5, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4, 6]  # 4 bits: more than one group of 8 rows
    engine = NativeEngine(apm, max_batch=len(bits), threads=2, head="fp16")
    slots = [engine.add([i + 1, 2 * i + 3], b)[0] for i, b in enumerate(bits)]
    out = engine.step(slots, list(range(len(bits))), bits)
    for i, b in enumerate(bits):
        torch.testing.assert_close(out[i], full_logits(apm, [i + 1, 2 * i + 3, i], b), **TOL)


def _isas() -> list[str]:
    order = ["portable", "avx2", "avx512"]
    return order[: order.index(cpu.best_isa()) + 1] if cpu.is_available() else []


@pytest.mark.parametrize("isa", _isas())
def test_every_kernel_family_gives_the_same_step(isa):
    """The engine on each ISA this CPU has (AVX-512 on machines with it), mixed precisions."""
    apm = build_apm(tiny_config("llama", hidden_size=320, intermediate_size=544, num_hidden_layers=1))
    before = cpu.isa()
    cpu.set_isa(isa)
    try:
        engine = NativeEngine(apm, threads=2, head="fp16")
        bits = [6, 3, 8, 5]
        slots = [engine.add([i + 4, 9], b)[0] for i, b in enumerate(bits)]
        out = engine.step(slots, [1, 2, 3, 4], bits)
    finally:
        cpu.set_isa(before)
    for i, b in enumerate(bits):
        torch.testing.assert_close(out[i], full_logits(apm, [i + 4, 9, i + 1], b), **TOL)
