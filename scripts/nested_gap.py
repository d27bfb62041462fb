"""Weighted objective per module and bit-width: nested (plain or joint seed) vs dedicated.

usage: python scripts/nested_gap.py --work-dir WORK [--model default] [--layers 0 10 20 29]
           [--joint 1 0.5 0.25 0] [--rows N] [--out gap.json]
WORK is a quantization work dir (its sensitivity/ folder holds the Fisher). Writes
{"modules": {name: {"dedicated": {b: obj}, "nested": {b: obj}, "joint_<w>": {b: obj}}},
 "totals": {...}, "seconds": {...}} and prints totals relative to dedicated.
"""

import argparse
import json
import time
from pathlib import Path

from anyprec import archs
from anyprec.clustering import quantize_nested, quantize_seed, sample_weights, weighted_objective
from anyprec.fileio import write_json_atomic
from anyprec.models import load_model
from anyprec.sensitivity import load_sensitivity

SEED, PARENT = 3, 8


def nested_objectives(w, f, joint):
    codes, luts = quantize_nested(w, f, SEED, PARENT, joint_weight=joint)
    return {b: float(weighted_objective(w, f, codes >> (PARENT - b), luts[b]).sum()) for b in luts}


def dedicated_objectives(w, f):
    out = {}
    for b in range(SEED, PARENT + 1):
        codes, lut = quantize_seed(w, f, b)
        out[b] = float(weighted_objective(w, f, codes, lut).sum())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work-dir", required=True, type=Path)
    ap.add_argument("--model", default="default")
    ap.add_argument("--layers", type=int, nargs="*", help="decoder layers (default: all)")
    ap.add_argument("--joint", type=float, nargs="*", default=[1.0, 0.5, 0.25, 0.0])
    ap.add_argument("--rows", type=int, default=None, help="every module's first N output rows only (default: all)")
    ap.add_argument("--out", type=Path, default=Path("nested_gap.json"))
    args = ap.parse_args()
    model, _ = load_model(args.model)
    groups = archs.layer_groups(model)
    layers = args.layers if args.layers else range(len(groups))
    variants = {"dedicated": None, "nested": None, **{f"joint_{j:g}": j for j in args.joint}}
    table, seconds = {}, {v: 0.0 for v in variants}
    for index in layers:
        fisher = load_sensitivity(args.work_dir / "sensitivity", groups[index])
        for name in groups[index]:
            rows = slice(0, args.rows)
            w = archs.get_weight(model.get_submodule(name)).numpy()[rows]
            f = sample_weights(w, fisher[name].numpy()[rows])
            table[name] = {}
            for variant, joint in variants.items():
                start = time.perf_counter()
                objs = dedicated_objectives(w, f) if variant == "dedicated" else nested_objectives(w, f, joint)
                seconds[variant] += time.perf_counter() - start
                table[name][variant] = objs
            print(name, {v: round(table[name][v][4] / table[name]["dedicated"][4] - 1, 4) for v in variants}, flush=True)
    totals = {v: {b: sum(row[v][b] for row in table.values()) for b in range(SEED, PARENT + 1)} for v in variants}
    write_json_atomic(args.out, {"layers": list(layers), "rows": args.rows, "modules": table, "totals": totals, "seconds": seconds})
    for v in variants:
        rel = " ".join(f"{b}:{totals[v][b] / totals['dedicated'][b] - 1:+.2%}" for b in range(SEED, PARENT + 1))
        print(f"{v:>12} {rel}  ({seconds[v]:.0f} s)")


if __name__ == "__main__":
    main()
