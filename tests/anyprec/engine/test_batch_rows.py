"""Decode batches of 1..16 sequences on the default paths (uint8 LUTs, int8w head, the
built-in tile thresholds, so long enough runs at 4+ bits go through the tile GEMM): every
row equals the same sequence decoded alone; and the head kernel's rows of a several-token
call equal its one-token calls."""

from __future__ import annotations

import pytest
import torch

from anyprec.engine import NativeEngine
from anyprec.engine.head import head_logits, quantize_head_int8
from anyprec.kernels import cpu
from tests.anyprec.engine.engine_testlib import build_apm, full_logits, tiny_config

pytestmark = pytest.mark.skipif(not cpu.is_available(), reason="native CPU kernels not built")
TOL = dict(rtol=1e-4, atol=1e-4)
# per batch size: runs that reach the decode tile threshold (5 rows at 6..8 bits, 8 at 4..5)
# next to short runs (mat-vec)
MIXES = {
    1: [5],
    2: [8, 3],
    4: [4, 4, 4, 4],
    5: [6, 6, 6, 6, 6],
    6: [8, 8, 3, 8, 8, 8],
    8: [3, 4, 5, 6, 7, 8, 3, 4],
    9: [4, 4, 4, 4, 3, 4, 4, 4, 4],
    11: [8, 8, 3, 8, 3, 8, 3, 5, 8, 7, 4],
    16: [3, 4, 5, 6, 7, 8, 3, 4, 4, 4, 8, 8, 4, 3, 8, 8],
}


@pytest.fixture(scope="module")
def apm():
    # 3 query heads over 1 kv head, intermediate 200: rows not a multiple of the micro-tile
    return build_apm(tiny_config("llama", hidden_size=96, num_attention_heads=3, intermediate_size=200), luts="u8")


@pytest.mark.parametrize("size", sorted(MIXES))
def test_each_row_equals_its_single_run(apm, size):
    batch_bits = MIXES[size]
    prompts = [[(7 * i + j) % 300 for j in range(2 + i % 5)] for i in range(size)]
    batch, alone = NativeEngine(apm, max_batch=16), NativeEngine(apm, max_batch=16)
    slots = [batch.add(p, b)[0] for p, b in zip(prompts, batch_bits)]
    single = [alone.add(p, b)[0] for p, b in zip(prompts, batch_bits)]
    for step in range(3):
        tokens = [(13 * step + 5 * i + 1) % 300 for i in range(size)]
        out = batch.step(slots, tokens, batch_bits)
        for i in range(size):
            torch.testing.assert_close(out[i], alone.step([single[i]], [tokens[i]], [batch_bits[i]])[0], **TOL)
    # the last row against the cache-free transformers forward (the int8w head's logits)
    seq = prompts[-1] + [(13 * s + 5 * (size - 1) + 1) % 300 for s in range(3)]
    ref = full_logits(apm, seq, batch_bits[-1])
    torch.testing.assert_close(out[-1], ref, **TOL)


def test_tiled_rows_equal_the_matvec_path(apm):
    """The same 8-row one-width batch with the built-in threshold (tiles at 4 and 8 bits) and
    mat-vec only: equal to fp32 summation order, and not bit-identical (the tiles ran)."""
    prompts = [[(3 * i + j) % 300 for j in range(3)] for i in range(8)]
    tiled, matvec = NativeEngine(apm, max_batch=8), NativeEngine(apm, max_batch=8)
    matvec.tile_rows = 10**9
    for bits in (4, 8):
        a = [tiled.add(p, bits)[0] for p in prompts]
        b = [matvec.add(p, bits)[0] for p in prompts]
        tokens = list(range(10, 18))
        got, ref = tiled.step(a, tokens, [bits] * 8), matvec.step(b, tokens, [bits] * 8)
        torch.testing.assert_close(got, ref, **TOL)
        assert not torch.equal(got, ref)  # the tiles did run: they sum in another order
        for s in a:
            tiled.release(s)
        for s in b:
            matvec.release(s)


@pytest.mark.parametrize("mode", ["int8w", "int8"])
@pytest.mark.parametrize("k", [96, 104, 576])
def test_head_rows_equal_one_token_calls(family, mode, k):
    """Every row of a T-token head call (T = 1..8, and 13 over two calls) is the one-token
    call's result bit for bit: the kernels sum each token in the same order whatever T is."""
    gen = torch.Generator().manual_seed(k)
    q, scale = quantize_head_int8((torch.randn(203, k, generator=gen) * 0.05).half())
    x = torch.randn(13, k, generator=gen) * 3
    ones = torch.cat([head_logits(x[t:t + 1], mode, q=q, scale=scale, threads=2) for t in range(13)])
    for tokens in (*range(1, 9), 13):
        got = head_logits(x[:tokens], mode, q=q, scale=scale, threads=2)
        assert torch.equal(got, ones[:tokens]), f"{tokens} tokens"


def test_batch_breakdown_times_every_part(apm, tmp_path):
    """`bench batch --breakdown`'s timer: the parts of one batch step (native engine) add up
    to at most the step; a transformers engine is refused before anything loads."""
    from anyprec import bench_engine
    from anyprec.bench import main
    from anyprec.errors import UsageError

    engine = NativeEngine(apm, max_batch=16)
    parts = bench_engine.batch_breakdown(engine, [3, 8, 8, 3, 5], list(range(3, 12)), steps=2)
    assert parts["qkv"] > 0 and parts["mlp_gate_up"] > 0 and parts["head"] > 0 and parts["rope_attention"] > 0
    c_parts = sum(v for k, v in parts.items() if k not in ("python_and_other", "step"))
    assert parts["step"] >= c_parts and parts["python_and_other"] >= 0
    with pytest.raises(UsageError, match="--breakdown .* --engine native"):
        main(["batch", str(tmp_path), "--engine", "transformers", "--breakdown"])
