"""The benchmark stage's figures: per-bit GEMV and decode figures, and the load flag."""

from __future__ import annotations

from anyprec.config import BenchmarkConfig
from anyprec.tasks.bench import LOAD_LIMIT, decode_figures, gemv_figures, load_report, machine_load


def test_gemv_figures_per_bit_width_and_dense_baselines():
    cfg = BenchmarkConfig(gemv_shape=[64, 128], bits=[3, 4], repeats=2, rotate_mib=1, bandwidth_mib=4)
    got = gemv_figures(cfg, threads=1)
    assert set(got["bits"]) == {"3", "4"}
    for figures in got["bits"].values():
        assert figures["gemv_latency_us"] > 0 and figures["gemv_spread"] >= 1.0 and figures["gemv_ratio_floor"] > 0
    assert got["base"] and all(key.endswith(("_us", "_bf16", "_spread")) for key in got["base"])
    assert len(got["raw"]["rows"]) == len(got["bits"]) + sum(r["kind"] != "anyprec" for r in got["raw"]["rows"])


def test_decode_figures_per_bit_width_and_base(tiny_quantized, tiny_model_dir):
    got = decode_figures(str(tiny_quantized[0]), str(tiny_model_dir), [3, 8], tokens=2, repeats=1)
    assert set(got["bits"]) == {"3", "8"}
    for figures in [*got["bits"].values(), got["base"]]:
        assert figures["decode_tok_s"] > 0 and figures["decode_spread"] >= 1.0


def test_load_is_flagged_only_above_the_limit_before_the_run():
    quiet, busy = {"load_per_cpu": LOAD_LIMIT / 2}, {"load_per_cpu": LOAD_LIMIT * 2}
    assert not load_report(quiet, busy)["under_load"]
    assert load_report(busy, quiet)["under_load"]
    now = machine_load()
    assert now["cpus"] >= 1 and now["load_per_cpu"] == now["load1"] / now["cpus"]
