"""One layer through the tile GEMM on a uint8 LUT: fp32 tiles against int16 tiles.

usage: python scripts/bench_tiles.py [--shape 1536 576] [--shape 576 1536] [--tokens 128]
           [--bits 3 4 8] [--threads 1] [--repeats 150]

Random planes and LUTs (the speed does not depend on the values); each figure is the fastest
of `repeats` calls, kinds interleaved, so a busy machine's preemptions drop out.
"""

import argparse
import time

import torch

from anyprec.kernels import cpu, pack_bitplanes
from anyprec.lutq import quantize_lut

KINDS = {"int16": 0, "fp32": 1}  # the tile_gemm kind argument (AP_TILES_AUTO picks int16 on AVX2)


def fastest(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=2, action="append", metavar=("ROWS", "COLS"))
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--bits", type=int, nargs="+", default=[3, 4, 8])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=150)
    args = p.parse_args()
    for n, k in args.shape or [(1536, 576), (576, 1536)]:
        gen = torch.Generator().manual_seed(0)
        planes = pack_bitplanes(torch.randint(0, 256, (n, k), generator=gen, dtype=torch.uint8), 8)
        x, y = torch.randn(args.tokens, k, generator=gen), torch.empty(args.tokens, n)
        for b in args.bits:
            qlut = quantize_lut(torch.randn(n, 1 << b, generator=gen).sort(dim=1).values)
            call = {kind: (lambda code=code: cpu._lib().tile_gemm(
                planes.data_ptr(), planes.stride(0), n, planes.shape[2], k, qlut.q.data_ptr(), 0, b, x.data_ptr(),
                args.tokens, k, y.data_ptr(), n, args.threads, qlut.lo.data_ptr(), qlut.scale.data_ptr(), code))
                for kind, code in KINDS.items()}
            best = {kind: float("inf") for kind in KINDS}
            for _ in range(3):  # interleaved thirds
                for kind, fn in call.items():
                    best[kind] = min(best[kind], fastest(fn, args.repeats // 3 or 1))
            gmac = {kind: n * k * args.tokens / s / 1e9 for kind, s in best.items()}
            print(f"{n} x {k}, {args.tokens} tokens, {b} bits: fp32 tiles {best['fp32'] * 1e3:.2f} ms "
                  f"({gmac['fp32']:.1f} GMAC/s), int16 tiles {best['int16'] * 1e3:.2f} ms "
                  f"({gmac['int16']:.1f} GMAC/s), "
                  f"int16 / fp32 speed {best['fp32'] / best['int16']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
