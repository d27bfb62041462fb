"""The benchmark stage: GEMV latency per bit-width and decode throughput, via the core benches.

Thin wrapper over `anyprec.kernels.bench_gemv.run_gemv_bench` (bitplane-LUT GEMV vs dense,
weights rotated through DRAM) and `anyprec.bench.measure_decode` (greedy decode tokens/s,
prompt excluded, bit-widths and base in interleaved rounds), reshaped into per-bit metrics for MLflow,
with the spread seen (`*_spread`: median / min GEMV time, p90 / p10 decode step) and the
machine's load before and after.
"""

from __future__ import annotations

import os
from typing import Any

from prefect import get_run_logger, task

from anyprec.config import BenchmarkConfig
from anyprec.tasks.caching import CACHED, BaseModelInfo, StageOutput
from anyprec.tasks.evaluate import write_report

# Load average per CPU above which other work is taken to share the CPUs with the benchmark.
LOAD_LIMIT = 0.5


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
                   "gemv_ratio_bf16": row["ratio_bf16"], "gemv_spread": row["ms_dram"] / row["ms_dram_min"]}
        if row["kind"] == "anyprec":
            figures["gemv_ratio_floor"] = row["ratio_floor"]
        if row["kind"] == "anyprec":
            per_bits[str(row["bits"])] = figures
        else:
            base.update({f"{row['kind']}_{name}": value for name, value in figures.items()})
    return {"bits": per_bits, "base": base, "raw": raw}


def decode_figures(packed_dir: str, base_dir: str, bits: list[int], tokens: int, repeats: int) -> dict[str, Any]:
    """{"bits": {"b": {decode_tok_s, decode_spread}}, "base": {...}}; spread = p90 / p10 step time."""
    from anyprec.bench import measure_decode

    def figures(row: dict[str, Any]) -> dict[str, float]:
        return {"decode_tok_s": row["tokens_per_s"], "decode_spread": row["ms_per_token_p90"] / row["ms_per_token_p10"]}

    rows = measure_decode(packed_dir, base_dir, bits, tokens, repeats)
    return {"bits": {str(r["bits"]): figures(r) for r in rows[:-1]}, "base": figures(rows[-1])}


def machine_load() -> dict[str, float]:
    """1-minute load average and CPU count, and the load per CPU."""
    load1 = os.getloadavg()[0]
    cpus = os.cpu_count() or 1
    return {"load1": load1, "cpus": cpus, "load_per_cpu": load1 / cpus}


def load_report(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """The machine's load around a benchmark; `under_load` when other work shared the CPUs before it."""
    return {"before": before, "after": after, "limit_per_cpu": LOAD_LIMIT,
            "under_load": before["load_per_cpu"] > LOAD_LIMIT}


@task(name="bench", **CACHED)
def bench(base: BaseModelInfo, packed: StageOutput, benchmark: BenchmarkConfig, out: str) -> dict[str, Any]:
    """Report: {"bits": {"b": {gemv_* figures, decode_tok_s, decode_spread}}, "base": {...}, "machine": load}.

    The figures of a run taken under load are flagged (`machine.under_load`) and not
    published to MLflow unless `benchmark.publish_under_load` says so (anyprec.tasks.tracking).
    """
    import torch

    log = get_run_logger()
    threads = benchmark.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    before = machine_load()
    if before["load_per_cpu"] > LOAD_LIMIT:
        log.warning("benchmark starts on a loaded machine (load %.1f on %d CPUs): its figures will be flagged",
                    before["load1"], before["cpus"])
    log.info("bench: GEMV %s at %s bits, %d threads", benchmark.gemv_shape, benchmark.bits, threads)
    gemv = gemv_figures(benchmark, threads)
    log.info("bench: decode %d tokens x %d rounds", benchmark.decode_tokens, benchmark.decode_repeats)
    decode = decode_figures(packed.path, base.location, benchmark.bits, benchmark.decode_tokens,
                            benchmark.decode_repeats)
    report = {
        "bits": {b: {**gemv["bits"][b], **decode["bits"][b]} for b in gemv["bits"]},
        "base": {**gemv["base"], **decode["base"]},
        "gemv": gemv["raw"],
        "threads": threads,
        "machine": load_report(before, machine_load()),
    }
    return write_report(out, report)
