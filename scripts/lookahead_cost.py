"""CPU time per row of seed + upscaling 3 -> 8 bits, plain splits vs look-ahead, at the row
lengths of a 7B Llama (4096 and 11008): `python scripts/lookahead_cost.py [--rows 64]`."""

import argparse
import time

import numpy as np

from anyprec import clustering as C


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--lookahead-weight", type=float, default=0.25)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for k in (4096, 11008):
        w = rng.standard_normal((args.rows, k)).astype(np.float32)
        f = rng.random((args.rows, k)).astype(np.float32)
        for weight in (None, args.lookahead_weight):
            C.quantize_nested(w[:2], f[:2], 3, 8, lookahead_weight=weight)  # compile
            start = time.process_time()
            C.quantize_nested(w, f, 3, 8, lookahead_weight=weight)
            per_row = (time.process_time() - start) / args.rows * 1e3
            print(f"K={k} lookahead_weight={weight}: {per_row:.2f} ms CPU per row")


if __name__ == "__main__":
    main()
