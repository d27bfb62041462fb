"""Paired perplexity ratio of two runs of scripts/nested_ppl.py --token-nll, with its error.

usage: python scripts/paired_nll.py A.json B.json [--block 128] [--out paired.json]
For every width and corpus both runs scored, the ratio ppl(A) / ppl(B) - 1 (in %) is
exp(mean_t d_t) - 1 with d_t = nll_A(t) - nll_B(t) on the same tokens; its standard error
comes from the means of blocks of `--block` consecutive tokens (batch means: neighbouring
tokens' differences are correlated, so a per-token error would be too small).
"""

import argparse
import json
import math
from pathlib import Path

import numpy as np

from anyprec.fileio import write_json_atomic


def paired(a: np.ndarray, b: np.ndarray, block: int) -> dict[str, float]:
    """{'ratio_pct', 'se_pct', 'blocks'}: ppl(a) / ppl(b) - 1 and its batch-means error (both %)."""
    if a.shape != b.shape:
        raise SystemExit(f"the runs scored different tokens ({a.size} against {b.size}): use the same --max-tokens")
    d = a - b
    blocks = d[: d.size // block * block].reshape(-1, block).mean(axis=1)
    mean = float(d.mean())
    se = float(blocks.std(ddof=1) / math.sqrt(blocks.size)) if blocks.size > 1 else float("nan")
    return {"ratio_pct": 100 * math.expm1(mean), "se_pct": 100 * se * math.exp(mean), "blocks": int(blocks.size)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    runs = [json.loads(p.read_text())["token_nll"] for p in (args.a, args.b)]
    table = {}
    for bits in sorted(set(runs[0]) & set(runs[1]), key=int):
        for corpus in sorted(set(runs[0][bits]) & set(runs[1][bits])):
            row = paired(np.asarray(runs[0][bits][corpus]), np.asarray(runs[1][bits][corpus]), args.block)
            table[f"{bits}/{corpus}"] = row
            print(f"{bits} bits {corpus}: {row['ratio_pct']:+.2f}% +- {row['se_pct']:.2f}% "
                  f"(1 s.e., {row['blocks']} blocks of {args.block})")
    if args.out:
        write_json_atomic(args.out, table)


if __name__ == "__main__":
    main()
