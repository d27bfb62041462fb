"""Nanoseconds per weight of the native dequantizer (the tile GEMM's prefill path), 1 thread,
process CPU time, best of 5 rounds of 20 calls (each includes allocating the output).

usage: python scripts/bench_dequant.py [--shape 1536 576] [--bits 3 4 5 8] [--isa avx2]
           [--luts u8 f16] [--out result.json]

A random layer of the given shape (N rows, K columns, 8-bit parent codes); `u8` is the
load's default LUT form (anyprec/lutq.py), `f16` the artifact's.
"""

import argparse
import json
import time

import torch

from anyprec.fileio import write_json_atomic
from anyprec.kernels import Backend, cpu, dequantize, pack_bitplanes
from anyprec.lutq import quantize_lut


def ns_per_weight(planes: torch.Tensor, lut, bits: int, n: int, k: int) -> float:
    """Best-of-5 CPU nanoseconds per dequantized weight (fp32 output)."""
    dequantize(planes, lut, bits, k, torch.float32, backend=Backend.CPU)
    best = float("inf")
    for _ in range(5):
        t = time.process_time()
        for _ in range(20):
            dequantize(planes, lut, bits, k, torch.float32, backend=Backend.CPU)
        best = min(best, (time.process_time() - t) / 20)
    return best / (n * k) * 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=2, default=[1536, 576], metavar=("N", "K"))
    ap.add_argument("--bits", type=int, nargs="+", default=[3, 4, 5, 8])
    ap.add_argument("--isa", default="avx2", choices=["portable", "avx2", "avx512"])
    ap.add_argument("--luts", nargs="+", default=["u8", "f16"], choices=["u8", "f16"])
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cpu.set_isa(args.isa)
    n, k = args.shape
    gen = torch.Generator().manual_seed(0)
    planes = pack_bitplanes(torch.randint(0, 256, (n, k), generator=gen, dtype=torch.int64).to(torch.uint8), 8)
    result = {"shape": [n, k], "isa": args.isa, "ns_per_weight": {}}
    for kind in args.luts:
        for bits in args.bits:
            lut = torch.sort(torch.randn(n, 1 << bits, generator=gen), dim=1).values * 0.05
            lut = quantize_lut(lut) if kind == "u8" else lut.half()
            result["ns_per_weight"][f"{kind}_{bits}bit"] = round(ns_per_weight(planes, lut, bits, n, k), 3)
    print(json.dumps(result))
    if args.out:
        write_json_atomic(args.out, result)


if __name__ == "__main__":
    main()
