"""The native engine with layers run by the tile GEMM (tile_rows forces the path) against
the same engine on the mat-vec kernels and the transformers forward: prefill chunks,
mixed-width batches where some widths cross the threshold and others do not."""

from __future__ import annotations

import pytest
import torch

from anyprec.engine import NativeEngine, native
from anyprec.kernels import cpu
from tests.anyprec.engine.engine_testlib import build_apm, full_logits, tiny_config

pytestmark = pytest.mark.skipif(not cpu.is_available(), reason="native CPU kernels not built")

TOL = dict(rtol=1e-4, atol=1e-5)
MATVEC_ONLY = 10**9  # a threshold no call reaches


@pytest.fixture(scope="module")
def apm():
    # 3 query heads over 1 kv head, intermediate 200: rows not a multiple of the micro-tile
    return build_apm(tiny_config("llama", hidden_size=96, num_attention_heads=3, intermediate_size=200))


def _engine(apm, tile_rows: int, max_batch: int = 8) -> NativeEngine:
    engine = NativeEngine(apm, max_batch=max_batch, head="fp16")
    engine.tile_rows = tile_rows
    return engine


@pytest.mark.parametrize("bits", [3, 5, 8])
def test_prefill_by_tiles_matches_matvec_and_transformers(apm, bits, monkeypatch):
    monkeypatch.setattr(native, "PREFILL_CHUNK", 24)  # 40 tokens: a chunk of 24 (tiles) and one of 16
    ids = [(13 * i + 5) % 300 for i in range(40)]
    tiled, matvec = _engine(apm, 16), _engine(apm, MATVEC_ONLY)
    slot, logits = tiled.add(ids, bits)
    ref_slot, ref = matvec.add(ids, bits)
    torch.testing.assert_close(logits, ref, **TOL)
    torch.testing.assert_close(logits, full_logits(apm, ids, bits), **TOL)
    # the cache the tiles wrote serves the next decode steps
    for token in (7, 250):
        torch.testing.assert_close(tiled.step([slot], [token], [bits]), matvec.step([ref_slot], [token], [bits]),
                                   **TOL)


def test_mixed_batch_some_widths_tiled(apm):
    """Threshold 3: widths with 3+ rows run by tiles, the others by mat-vec, in one step."""
    batch_bits = [4, 8, 4, 3, 4, 6, 8, 8]  # 4 and 8 cross the threshold, 3 and 6 do not
    prompts = [[(7 * i + j) % 300 for j in range(3 + i)] for i in range(len(batch_bits))]
    tiled, matvec = _engine(apm, 3), _engine(apm, MATVEC_ONLY)
    slots = [tiled.add(p, b)[0] for p, b in zip(prompts, batch_bits)]
    ref_slots = [matvec.add(p, b)[0] for p, b in zip(prompts, batch_bits)]
    for step in range(3):
        tokens = [(11 * step + 3 * i) % 300 for i in range(len(slots))]
        out = tiled.step(slots, tokens, batch_bits)
        torch.testing.assert_close(out, matvec.step(ref_slots, tokens, batch_bits), **TOL)
        for i in (0, 3):  # a tiled row and a mat-vec row against the cache-free oracle
            prompts[i].append(tokens[i])
            torch.testing.assert_close(out[i], full_logits(apm, prompts[i], batch_bits[i]), **TOL)
        for i in set(range(len(slots))) - {0, 3}:
            prompts[i].append(tokens[i])


def test_every_row_tiled_at_threshold_one(apm):
    tiled, matvec = _engine(apm, 1), _engine(apm, MATVEC_ONLY)
    slot, logits = tiled.add([1, 2, 3], 6)
    ref_slot, ref = matvec.add([1, 2, 3], 6)
    torch.testing.assert_close(logits, ref, **TOL)
    torch.testing.assert_close(tiled.step([slot], [9], [6]), matvec.step([ref_slot], [9], [6]), **TOL)
