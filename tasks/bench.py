"""The benchmark stage: GEMV latency per bit-width and decode throughput of the artifact.

Measured through the public dispatch (`anyprec.kernels.matmul`, the backend the runtime
uses) and `AnyPrecisionModel.generate`; the median of timed repeats after a warm-up.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

from prefect import task

from anyprec.config import BenchmarkConfig
from anyprec.env import apply_offline_env
from anyprec.tasks.caching import StageOutput
from anyprec.tasks.evaluate import write_report
from anyprec.tasks.quantize import CACHED

apply_offline_env()


def median_seconds(fn: Callable[[], Any], repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of fn() in seconds over `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gemv_latency_us(shape: tuple[int, int], bits: list[int], parent_bits: int, seed: int = 0) -> dict[str, float]:
    """{"b": microseconds} of a batch-1 bitplane GEMV y[N] = W_b x[K] on random codes/LUTs."""
    import torch

    from anyprec.kernels import matmul, pack_bitplanes

    n, k = shape
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2**parent_bits, (n, k), dtype=torch.uint8, generator=gen)
    planes = pack_bitplanes(codes, parent_bits)
    x = torch.randn(1, k, generator=gen)
    out = {}
    for b in bits:
        lut = torch.randn(n, 2**b, generator=gen).sort(dim=1).values.to(torch.float16)
        out[str(b)] = 1e6 * median_seconds(lambda: matmul(x, planes, lut, b, k))
    return out


def dense_gemv_latency_us(shape: tuple[int, int], seed: int = 0) -> float:
    """Microseconds of the dense fp32 batch-1 GEMV of the same shape (the reference)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    w, x = torch.randn(shape, generator=gen), torch.randn(shape[1], generator=gen)
    return 1e6 * median_seconds(lambda: torch.mv(w, x))


def decode_tokens_per_s(apm: Any, bits: list[int], new_tokens: int) -> dict[str, float]:
    """{"b": generated tokens per second} for greedy decoding of `new_tokens` tokens (batch 1)."""
    ids = apm.tokenizer("The", return_tensors="pt")["input_ids"]
    kwargs = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    out = {}
    for b in bits:
        seconds = median_seconds(lambda: apm.generate(ids, precision=b, **kwargs), repeats=3, warmup=1)
        out[str(b)] = new_tokens / seconds
    return out


@task(name="bench", **CACHED)
def bench(packed: StageOutput, benchmark: BenchmarkConfig, out: str) -> dict[str, Any]:
    """Report: {"bits": {"b": {"gemv_latency_us", "decode_tok_s"}}, "base": {"gemv_latency_us"}, ...}."""
    import torch

    from anyprec.runtime import load_anyprec

    if benchmark.threads:
        torch.set_num_threads(benchmark.threads)
    apm = load_anyprec(packed.path, benchmark.bits)
    parent = apm.manifest["parent_bits"]
    gemv = gemv_latency_us(tuple(benchmark.gemv_shape), benchmark.bits, parent)
    decode = decode_tokens_per_s(apm, benchmark.bits, benchmark.decode_tokens)
    report = {
        "bits": {str(b): {"gemv_latency_us": gemv[str(b)], "decode_tok_s": decode[str(b)]} for b in benchmark.bits},
        "base": {"gemv_latency_us": dense_gemv_latency_us(tuple(benchmark.gemv_shape))},
        "gemv_shape": list(benchmark.gemv_shape),
        "threads": torch.get_num_threads(),
    }
    return write_report(out, report)
