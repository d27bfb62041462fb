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
    argv = ["decode", str(tiny_artifact), "--bits", "3", "4.5", "8", "--tokens", "4", "--repeats", "1",
            "--threads", "1", "--json", str(out)]
    assert main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["kind"], r["bits"]) for r in rows] == [("anyprec", 3), ("anyprec", 4.5), ("anyprec", 8),
                                                      ("base_fp32", 32)]
    for row in rows:
        assert row["tokens"] == 4 and row["tokens_per_s"] > 0 and row["speedup_vs_base"] > 0


def test_decode_bench_refuses_a_width_out_of_range(tiny_artifact: Path) -> None:
    from anyprec.errors import PrecisionError

    for engine in ("transformers", "native"):
        with pytest.raises(PrecisionError, match="--bits 9: outside 3..8"):
            main(["decode", str(tiny_artifact), "--bits", "4", "9", "--engine", engine])


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


def test_native_engine_benches_write_rows(tmp_path: Path) -> None:
    """decode --engine native, prefill and batch on an in-memory-built tiny artifact."""
    from anyprec import bench_engine
    from anyprec.engine import NativeEngine, TransformersEngine
    from tests.anyprec.engine.engine_testlib import build_apm, tiny_config

    apm = build_apm(tiny_config("llama"))
    engines = {"native": NativeEngine(apm), "transformers": TransformersEngine(apm)}
    ids = list(range(3, 20))
    rows = bench_engine.measure_engine_decode(engines, [3, 8], ids, tokens=4, rounds=2,
                                              others={"peer": lambda: [0.5, 0.25]})
    assert {(r["engine"], r["bits"]) for r in rows} == {("native", 3), ("native", 8), ("transformers", 3),
                                                         ("transformers", 8), ("peer", 0)}
    peer = next(r for r in rows if r["engine"] == "peer")
    assert peer["steps_timed"] == 4 and peer["tokens_per_s"] == pytest.approx(1 / 0.375)
    assert all(r["ms_per_token_p10"] <= r["ms_per_token"] <= r["ms_per_token_p90"] for r in rows)
    prefill = bench_engine.measure_prefill(engines, [4], ids, rounds=2)
    assert [r["engine"] for r in prefill] == ["native", "transformers"] and prefill[0]["prompt_tokens"] == len(ids)
    batch = bench_engine.measure_batch(engines["native"], [3, 8, 3], ids, steps=3, rounds=1)
    assert set(batch["single_tokens_per_s"]) == {3, 8} and batch["ratio"] > 0
    parts = bench_engine.step_breakdown(engines["native"], 3, ids, steps=3)
    assert parts["qkv"] > 0 and parts["head"] > 0 and parts["step"] >= parts["qkv"] + parts["head"]
    parts = bench_engine.prefill_breakdown(engines["native"], 4, ids, repeats=2)
    assert parts["rope_attention"] > 0 and parts["mlp_gate_up"] > 0
    assert parts["prefill"] == pytest.approx(sum(v for k, v in parts.items() if k != "prefill"))
    assert not engines["native"].profile


def test_llamacpp_path_without_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from anyprec import bench_llamacpp

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if not installed
    with pytest.raises(RuntimeError, match=r"pip install -e \.\[compare\]"):
        bench_llamacpp.make_ggufs(tmp_path / "src.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    ours = [{"bits": 3, "tokens_per_s": 100.0}, {"bits": 8, "tokens_per_s": 50.0}, {"bits": 5, "tokens_per_s": 80.0}]
    ratios = bench_llamacpp.ratio_rows(ours, {"Q4_0": {"tokens_per_s": 200.0}, "Q8_0": {"tokens_per_s": 40.0}})
    assert [(r["bits"], r["peer"], r["ratio"]) for r in ratios] == [(3, "Q4_0", 0.5), (8, "Q8_0", 1.25)]
    (tmp_path / "m.gguf").write_bytes(b"x" * 1000)
    assert bench_llamacpp.bits_per_weight(tmp_path / "m.gguf", 2000) == 4.0
    with pytest.raises(SystemExit, match="llama-cpp-python"):
        main(["decode", str(tmp_path), "--engine", "native", "--vs", "llamacpp"])


def test_native_benches_time_averages_as_plans(tiny_artifact: Path, tmp_path: Path) -> None:
    """`bench decode --engine native --bits 3 4.5` times the 4.5 plan on the native engine next to 3
    bits; a plan name is refused by name (the engine benches take widths and averages)."""
    from anyprec.errors import UsageError

    out = tmp_path / "decode.json"
    assert main(["decode", str(tiny_artifact), "--engine", "native", "--bits", "3", "4.5", "--tokens", "4",
                 "--repeats", "1", "--prompt-tokens", "4", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert sorted(r["bits"] for r in rows) == [3, 4.5] and all(r["tokens_per_s"] > 0 for r in rows)
    out = tmp_path / "batch.json"
    assert main(["batch", str(tiny_artifact), "--batch-bits", "4.5", "3", "--steps", "3", "--repeats", "1",
                 "--json", str(out)]) == 0
    assert json.loads(out.read_text())["batch_bits"] == [4.5, 3]
    with pytest.raises(UsageError, match="neither a bit-width nor a stored plan"):
        main(["prefill", str(tiny_artifact), "--bits", "4", "some-plan"])
    plan_file = tmp_path / "plan.json"
    plan_file.write_text("{}")
    with pytest.raises(UsageError, match=f"--bits {plan_file}: the engine benches take bit-widths and averages"):
        main(["prefill", str(tiny_artifact), "--bits", "4", str(plan_file)])
