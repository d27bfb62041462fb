"""GEMV benchmark: bitplane-LUT kernel vs torch dense fp32/bf16, from DRAM and hot.

Everything is measured in one process and run: the memory-read bandwidth (for the floor),
dense baselines, and our kernel per bit-width. "DRAM" timings rotate over enough weight
copies that the working set exceeds the last-level cache; "hot" timings reuse one copy.
Weights are random (codes uniform, LUT fp16 as in the artifact); speed does not depend
on the values.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from anyprec.kernels.bitplanes import words_per_row
from anyprec.kernels.dispatch import Backend, decode_plan, matmul, resolve_backend

@dataclass(frozen=True)
class GemvConfig:
    """What to measure: shape [out, in], bit-widths, threads, repeats, rotation set size."""

    out_features: int = 4096
    in_features: int = 4096
    bits: tuple[int, ...] = (3, 4, 5, 6, 7, 8)
    threads: int = 2
    repeats: int = 30
    rotate_mib: int = 384
    bandwidth_mib: int = 512
    backend: str | None = None


def time_ms(fn: Callable[[int], object], copies: int, repeats: int) -> tuple[float, float]:
    """(median, min) wall time in ms of fn(i), i cycling over `copies` buffers, after a
    warm-up pass over every buffer (the first calls of a kernel in a process run slower:
    without it, whichever bit-width is measured first looked ~15% slower). The min is
    reported too: on a shared machine, calls longer than a scheduler slice are often
    preempted, which inflates the median but rarely every call."""
    for i in range(max(copies, 3)):
        fn(i % copies)
    times = []
    for r in range(repeats):
        start = time.perf_counter()
        fn(r % copies)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, min(times) * 1e3


BANDWIDTH_PIECE_MIB = 8


def read_bandwidth_gbps(buffer_mib: int, threads: int, passes: int = 3) -> float:
    """Memory-read bandwidth in GB/s: the best streaming read of an 8 MiB piece while
    cycling over `buffer_mib` MiB (choose it larger than the last-level cache, so every
    piece comes from DRAM). Short pieces, like the kernel calls, are rarely preempted; the
    best piece gives the lowest floor, so ratio_floor is conservative. Uses the native
    XOR reader, else torch's sum."""
    from anyprec.kernels import cpu

    piece = BANDWIDTH_PIECE_MIB << 18
    buf = torch.ones(max(buffer_mib << 18, 2 * piece), dtype=torch.float32)
    pieces = list(buf.split(piece))[: buf.numel() // piece]
    if cpu.is_available():
        read = lambda i: cpu.read_bytes(pieces[i], threads)  # noqa: E731
    else:
        read = lambda i: pieces[i].sum()  # noqa: E731
    best_ms = time_ms(read, len(pieces), passes * len(pieces))[1]
    return piece * 4 / best_ms / 1e6


def copies_for(bytes_per_copy: int, rotate_mib: int) -> int:
    """Number of weight copies whose total exceeds `rotate_mib` MiB (at least 2)."""
    return max(2, -(-(rotate_mib << 20) // max(bytes_per_copy, 1)))


def _row(kind: str, bits: int, dram: tuple[float, float], hot: tuple[float, float], nbytes: int, gbps: float) -> dict:
    floor_ms = nbytes / gbps / 1e6
    return {
        "kind": kind, "bits": bits, "ms_dram": dram[0], "ms_dram_min": dram[1],
        "ms_hot": hot[0], "ms_hot_min": hot[1], "bytes": nbytes, "gbps": nbytes / dram[0] / 1e6,
        "floor_ms": floor_ms, "ratio_floor": dram[0] / floor_ms, "ratio_floor_min": dram[1] / floor_ms,
    }


def measure_dense(cfg: GemvConfig, dtype: torch.dtype, gbps: float) -> dict:
    """Row for torch's dense F.linear on a [1, K] activation in `dtype`."""
    n, k = cfg.out_features, cfg.in_features
    nbytes = n * k * dtype.itemsize
    weights = [torch.randn(n, k).to(dtype) for _ in range(copies_for(nbytes, cfg.rotate_mib))]
    x = torch.randn(1, k).to(dtype)
    ms_dram = time_ms(lambda i: F.linear(x, weights[i]), len(weights), cfg.repeats)
    ms_hot = time_ms(lambda _: F.linear(x, weights[0]), 1, cfg.repeats)
    name = {torch.float32: "dense_fp32", torch.bfloat16: "dense_bf16"}[dtype]
    return _row(name, dtype.itemsize * 8, ms_dram, ms_hot, nbytes, gbps)


def random_packed(n: int, k: int, bits: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(planes int32[bits, N, W] with zero padding, lut fp16[N, 2**bits])."""
    planes = torch.randint(-(2**31), 2**31, (bits, n, words_per_row(k)), dtype=torch.int64, generator=gen)
    if k % 32:
        planes[:, :, -1] &= (1 << (k % 32)) - 1
    lut = torch.sort(torch.randn(n, 1 << bits, generator=gen), dim=1).values.half()
    return planes.to(torch.int32), lut


def measure_bits(cfg: GemvConfig, bits: int, gbps: float) -> dict:
    """Row for our kernel at `bits`: bytes = planes read + fp16 LUT + x + y."""
    n, k = cfg.out_features, cfg.in_features
    gen = torch.Generator().manual_seed(bits)
    first = random_packed(n, k, bits, gen)
    nbytes = first[0].numel() * 4 + first[1].numel() * 2 + (k + n) * 4
    layers = [first] + [random_packed(n, k, bits, gen) for _ in range(copies_for(nbytes, cfg.rotate_mib) - 1)]
    x = torch.randn(1, k)
    # the call the runtime makes for a decode step: a checked-once plan where the backend
    # has one (native CPU), else the dispatching matmul
    plans = [decode_plan(planes, lut, bits, k, backend=cfg.backend) for planes, lut in layers]

    def run(i: int) -> torch.Tensor:
        planes, lut = layers[i]
        plan = plans[i]
        return plan(x) if plan is not None else matmul(x, planes, lut, bits, k, backend=cfg.backend)

    ms_dram = time_ms(run, len(layers), cfg.repeats)
    ms_hot = time_ms(lambda _: run(0), 1, cfg.repeats)
    return _row("anyprec", bits, ms_dram, ms_hot, nbytes, gbps)


def run_gemv_bench(cfg: GemvConfig) -> dict:
    """All rows of one benchmark run, plus the run's settings and measured bandwidth."""
    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        # best of 1 and N threads: on a loaded machine an N-thread pass can lose a thread
        gbps = max(read_bandwidth_gbps(cfg.bandwidth_mib, t) for t in {1, cfg.threads})
        dense = [measure_dense(cfg, torch.float32, gbps), measure_dense(cfg, torch.bfloat16, gbps)]
        rows = [measure_bits(cfg, b, gbps) for b in cfg.bits]
    finally:
        torch.set_num_threads(previous)
    for row in dense + rows:
        row["ratio_bf16"] = row["ms_dram"] / dense[1]["ms_dram"]
        row["ratio_bf16_min"] = row["ms_dram_min"] / dense[1]["ms_dram_min"]
    backend = resolve_backend(torch.device("cpu"), cfg.backend)
    return {
        "config": asdict(cfg), "backend": backend.value, "isa": _isa_name(backend),
        "bandwidth_gbps": gbps, "rows": rows + dense,
    }


def _isa_name(backend: Backend) -> str:
    if backend is not Backend.CPU:
        return "n/a"
    from anyprec.kernels import cpu

    return cpu.isa()


def format_table(result: dict) -> str:
    """Fixed-width table of the rows, one line per kernel."""
    lines = [
        f"backend={result['backend']} isa={result['isa']} threads={result['config']['threads']} "
        f"read bandwidth={result['bandwidth_gbps']:.1f} GB/s shape="
        f"{result['config']['out_features']}x{result['config']['in_features']}",
        "median over repeats (min in brackets); x_floor = ms_dram / floor_ms, x_bf16 = ms_dram / bf16 ms_dram",
        f"{'kernel':<11}{'bits':>5}{'ms_dram':>16}{'ms_hot':>16}{'GB/s':>7}{'floor_ms':>9}"
        f"{'x_floor':>14}{'x_bf16':>14}",
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['kind']:<11}{r['bits']:>5}{r['ms_dram']:>8.3f} [{r['ms_dram_min']:.3f}]"
            f"{r['ms_hot']:>8.3f} [{r['ms_hot_min']:.3f}]{r['gbps']:>7.1f}{r['floor_ms']:>9.3f}"
            f"{r['ratio_floor']:>7.2f} [{r['ratio_floor_min']:.2f}]{r['ratio_bf16']:>7.2f} [{r['ratio_bf16_min']:.2f}]"
        )
    return "\n".join(lines)


# --- uint8-LUT kernels (ap_lut8_avx2.c) against today's fp16-LUT kernel, hot, CPU time -----

LUT8_KINDS = ("fp16_lut", "u8_fp32", "u8_int8")


def _lut8_call(kind: str, n: int, k: int, bits: int, tokens: int) -> Callable[[], object]:
    """One hot decode call of `kind` on a random [n, k] layer (codes uniform, LUT sorted), as
    a checked-once plan makes it: the native call and the output allocation."""
    from anyprec.kernels import cpu
    from anyprec.lutq import quantize_lut

    planes, lut = random_packed(n, k, bits, torch.Generator().manual_seed(bits))
    x = torch.randn(tokens, k)
    if kind == "fp16_lut":
        plan = cpu.DecodePlan(planes, lut, bits, k)
        return lambda: plan(x)
    q, lo, scale = quantize_lut(lut)
    cpu.gemv_u8(planes, q, lo, scale, x, bits)  # checks the arguments once; the timed call skips them
    head = (planes.data_ptr(), planes.stride(0), n, planes.shape[2], k, q.data_ptr(), lo.data_ptr(),
            scale.data_ptr(), bits, x.data_ptr(), tokens, k)
    group = cpu.ACT_GROUP if kind == "u8_int8" else 0

    def call() -> torch.Tensor:
        y = torch.empty(tokens, n)
        cpu._lib().gemv_u8(*head, y.data_ptr(), n, group, 1)
        return y

    call.held = (planes, q, lo, scale, x)  # the tensors behind the raw pointers in `head`
    return call


def cpu_us_per_call(fn: Callable[[], object], min_cpu_s: float) -> float:
    """CPU time of this thread per call in microseconds, over >= min_cpu_s after a warm-up:
    CPU time, not wall time, so that other processes on a shared machine count less."""
    for _ in range(3):
        fn()
    calls, start = 0, time.thread_time()
    while time.thread_time() - start < min_cpu_s:
        fn()
        calls += 1
    return (time.thread_time() - start) / calls * 1e6


def run_lut8_bench(shapes: list[tuple[int, int]], bits: list[int], rounds: int, tokens: int,
                   min_cpu_s: float) -> dict:
    """Rows {shape, bits, kind, us (best round), us_rounds} on one thread; rounds interleave
    every shape, width and kind, so each round sees the same machine state."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    calls = {(n, k, b, kind): _lut8_call(kind, n, k, b, tokens) for n, k in shapes for b in bits for kind in LUT8_KINDS}
    times: dict[tuple, list[float]] = {key: [] for key in calls}
    try:
        for _ in range(rounds):
            for key, fn in calls.items():
                times[key].append(cpu_us_per_call(fn, min_cpu_s))
    finally:
        torch.set_num_threads(previous)
    rows = [{"shape": f"{n}x{k}", "bits": b, "kind": kind, "us": min(t), "us_rounds": t}
            for (n, k, b, kind), t in times.items()]
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    return {"tokens": tokens, "threads": 1, "loadavg": load, "rows": rows}


def format_lut8(result: dict) -> str:
    """One line per shape and width: microseconds per call of each kind, best of the rounds."""
    lines = [f"1 thread, {result['tokens']} token(s), CPU us per call (best round); loadavg {result['loadavg']}",
             f"{'shape':<12}{'bits':>5}" + "".join(f"{k:>11}" for k in LUT8_KINDS) + f"{'fp32/f16':>10}{'int8/f16':>10}"]
    by = {(r["shape"], r["bits"], r["kind"]): r["us"] for r in result["rows"]}
    for shape, bits in dict.fromkeys((r["shape"], r["bits"]) for r in result["rows"]):
        us = [by[shape, bits, k] for k in LUT8_KINDS]
        lines.append(f"{shape:<12}{bits:>5}" + "".join(f"{u:>11.1f}" for u in us)
                     + f"{us[1] / us[0]:>10.2f}{us[2] / us[0]:>10.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """python -m anyprec.kernels.bench_gemv --lut8 [--shapes NxK,...] [--bits 3,4,...] [--json PATH]"""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lut8", action="store_true", required=True,
                        help="compare the fp16-LUT kernel with the uint8-LUT kernels (fp32 / int8 activations)")
    parser.add_argument("--shapes", default="1536x576,576x1536,576x576", help="comma-separated OUTxIN")
    parser.add_argument("--bits", default="3,4,5,6,7,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=1)
    parser.add_argument("--min-cpu-s", type=float, default=0.2, help="CPU seconds per measurement")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    try:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
        bits = [int(b) for b in args.bits.split(",")]
    except ValueError:
        parser.error(f"--shapes {args.shapes!r} / --bits {args.bits!r}: use e.g. --shapes 576x576 --bits 3,4")
    result = run_lut8_bench(shapes, bits, args.rounds, args.tokens, args.min_cpu_s)
    print(format_lut8(result))
    if args.json:
        from anyprec.fileio import write_json_atomic

        write_json_atomic(args.json, result)


if __name__ == "__main__":
    main()
