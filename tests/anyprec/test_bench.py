"""`anyprec bench gemv` on a tiny shape: the table prints and the JSON has every row/key."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from anyprec.bench import StepTimer, main, parse_shape, rotating_decode_steps

ROW_KEYS = {"kind", "bits", "ms_dram", "ms_hot", "gbps", "bytes", "floor_ms", "ratio_floor", "ratio_bf16"}


def test_gemv_bench_writes_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gemv.json"
    argv = ["gemv", "--shape", "48x100", "--bits", "3", "8", "--repeats", "3", "--rotate-mib", "1",
            "--bandwidth-mib", "4", "--threads", "1", "--json", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    kinds = [(r["kind"], r["bits"]) for r in result["rows"]]
    assert kinds == [("anyprec", 3), ("anyprec", 8), ("dense_fp32", 32), ("dense_bf16", 16)]
    for row in result["rows"]:
        assert ROW_KEYS <= row.keys()
        assert row["ms_dram"] > 0 and row["ms_hot"] > 0 and row["ratio_floor"] > 0
    assert result["rows"][-1]["ratio_bf16"] == 1.0
    assert result["rows"][0]["bytes"] < result["rows"][1]["bytes"]
    assert "dense_bf16" in capsys.readouterr().out


def test_parse_shape() -> None:
    assert parse_shape("4096x11008") == (4096, 11008)
    with pytest.raises(argparse.ArgumentTypeError, match="OUTxIN"):
        parse_shape("4096")


def test_decode_bench_rows(tiny_artifact: Path, tmp_path: Path) -> None:
    out = tmp_path / "decode.json"
    argv = ["decode", str(tiny_artifact), "--bits", "3", "8", "--tokens", "4", "--repeats", "1",
            "--threads", "1", "--json", str(out)]
    assert main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["kind"], r["bits"]) for r in rows] == [("anyprec", 3), ("anyprec", 8), ("base_fp32", 32)]
    for row in rows:
        assert row["tokens"] == 4 and row["tokens_per_s"] > 0 and row["speedup_vs_base"] > 0


def test_step_timer_excludes_prompt_and_prefill() -> None:
    timer = StepTimer()
    timer.stamps = [10.0, 12.5, 12.75, 13.25]  # prompt put, then three new tokens
    assert timer.step_seconds() == [0.25, 0.5]


def test_rotating_decode_times_every_bit_width_and_restores_precision(tiny_artifact: Path) -> None:
    import torch

    from anyprec.runtime import load_anyprec

    model = load_anyprec(tiny_artifact, [3, 5, 8])
    ids = torch.tensor([[5, 6, 7]])
    seen: list[int] = []
    original = model.set_precision
    model.set_precision = lambda b: (seen.append(b), original(b))[1]  # type: ignore[method-assign]
    steps = rotating_decode_steps(model, [3, 5, 8], ids, tokens_per_bits=6, block=3)
    schedule = [3, 3, 3, 5, 5, 5, 8, 8, 8] * 2  # precision of the step making token i + 1
    assert seen == [schedule[min(i, 17)] for i in range(19)] + [8]  # per token, then restored
    # per bit-width: 2 blocks of 3 steps, less the first step after each switch
    assert {b: len(t) for b, t in steps.items()} == {3: 4, 5: 4, 8: 4}
    assert all(t > 0 for times in steps.values() for t in times)
    assert model.current_precision == 8
