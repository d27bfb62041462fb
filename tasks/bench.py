"""The benchmark stage: GEMV latency per bit-width and decode throughput, via the core benches.

Thin wrapper over `anyprec.kernels.bench_gemv.run_gemv_bench` (bitplane-LUT GEMV vs dense,
weights rotated through DRAM) and `anyprec.bench.measure_decode` (greedy decode tokens/s,
prompt excluded, bit-widths and base in interleaved rounds), reshaped into per-bit metrics for MLflow.
"""

from __future__ import annotations

from typing import Any

from prefect import task

from anyprec.config import BenchmarkConfig
from anyprec.tasks.caching import CACHED, BaseModelInfo, StageOutput
from anyprec.tasks.evaluate import write_report


def gemv_figures(benchmark: BenchmarkConfig, threads: int) -> dict[str, Any]:
    """{"bits": {"b": {gemv_latency_us, gemv_latency_hot_us, gemv_ratio_bf16, gemv_ratio_floor}},
    "base": {...}, "raw": run_gemv_bench result}; ratios as defined in kernels/bench_gemv.py."""
    from anyprec.kernels.bench_gemv import GemvConfig, run_gemv_bench

    n, k = benchmark.gemv_shape
    cfg = GemvConfig(out_features=n, in_features=k, bits=tuple(benchmark.bits), threads=threads,
                     repeats=benchmark.repeats, rotate_mib=benchmark.rotate_mib, bandwidth_mib=benchmark.bandwidth_mib)
    raw = run_gemv_bench(cfg)
    per_bits, base = {}, {}
    for row in raw["rows"]:
        figures = {"gemv_latency_us": row["ms_dram"] * 1e3, "gemv_latency_hot_us": row["ms_hot"] * 1e3,
                   "gemv_ratio_bf16": row["ratio_bf16"]}
        if row["kind"] == "anyprec":
            figures["gemv_ratio_floor"] = row["ratio_floor"]
        if row["kind"] == "anyprec":
            per_bits[str(row["bits"])] = figures
        else:
            base.update({f"{row['kind']}_{name}": value for name, value in figures.items()})
    return {"bits": per_bits, "base": base, "raw": raw}


def decode_figures(packed_dir: str, base_dir: str, bits: list[int], tokens: int, repeats: int) -> dict[str, Any]:
    """{"bits": {"b": decode_tok_s}, "base": decode_tok_s of the unquantized model}."""
    from anyprec.bench import measure_decode

    rows = measure_decode(packed_dir, base_dir, bits, tokens, repeats)
    return {"bits": {str(r["bits"]): r["tokens_per_s"] for r in rows[:-1]}, "base": rows[-1]["tokens_per_s"]}


@task(name="bench", **CACHED)
def bench(base: BaseModelInfo, packed: StageOutput, benchmark: BenchmarkConfig, out: str) -> dict[str, Any]:
    """Report: {"bits": {"b": {gemv_* figures, decode_tok_s}}, "base": {...}, ...}."""
    import torch

    threads = benchmark.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    gemv = gemv_figures(benchmark, threads)
    decode = decode_figures(packed.path, base.location, benchmark.bits, benchmark.decode_tokens,
                            benchmark.decode_repeats)
    report = {
        "bits": {b: {**gemv["bits"][b], "decode_tok_s": decode["bits"][b]} for b in gemv["bits"]},
        "base": {**gemv["base"], "decode_tok_s": decode["base"]},
        "gemv": gemv["raw"],
        "threads": threads,
    }
    return write_report(out, report)
