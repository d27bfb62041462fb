"""Perplexity and per-module objective of a whole model quantized in memory, nested 3..8.

usage: python scripts/nested_ppl.py --work-dir WORK --variant plain|joint:W [--bits 4 3 5]
           [--corpus wiki news] [--max-tokens 4096] [--out result.json]
plain reads the nested codes the quantization wrote (WORK/quantized/nested); joint:W
re-runs the seed with joint_weight=W and upscales. Weights are set to the fp16-rounded
LUT value of each code (what the artifact stores); results are written after every width.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from anyprec import archs
from anyprec.calibration import heldout_split
from anyprec.clustering import quantize_nested, sample_weights, weighted_objective
from anyprec.fileio import write_json_atomic
from anyprec.models import load_model
from anyprec.perplexity import heldout_streams, perplexity
from anyprec.sensitivity import LAYER_FILE, load_sensitivity

SEED, PARENT = 3, 8


def quantize_all(model, work: Path, variant: str) -> tuple[dict, dict]:
    """({module: (codes, {b: lut})}, {module: {b: objective}}) for every quantized module."""
    out, table = {}, {}
    joint = None if variant == "plain" else float(variant.split(":")[1])
    for index, names in enumerate(archs.layer_groups(model)):
        fisher = load_sensitivity(work / "sensitivity", names)
        stored = load_file(str(work / "quantized" / "nested" / LAYER_FILE.format(index))) if joint is None else None
        for name in names:
            w = archs.get_weight(model.get_submodule(name)).numpy()
            f = sample_weights(w, fisher[name].numpy())
            if stored is None:
                codes, luts = quantize_nested(w, f, SEED, PARENT, joint_weight=joint)
            else:
                codes = stored[f"{name}.codes"].numpy()
                luts = {b: stored[f"{name}.lut{b}"].numpy() for b in range(SEED, PARENT + 1)}
            out[name] = (codes, luts)
            table[name] = {b: float(weighted_objective(w, f, codes >> (PARENT - b), luts[b]).sum()) for b in luts}
        print(f"layer {index} quantized", flush=True)
    return out, table


def set_width(model, quantized: dict, bits: int) -> None:
    for name, (codes, luts) in quantized.items():
        lut = torch.from_numpy(luts[bits].astype(np.float16).astype(np.float32))
        w = torch.take_along_dim(lut, torch.from_numpy((codes >> (PARENT - bits)).astype(np.int64)), dim=1)
        archs.set_weight(model.get_submodule(name), w)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work-dir", required=True, type=Path)
    ap.add_argument("--variant", required=True)
    ap.add_argument("--model", default="default")
    ap.add_argument("--bits", type=int, nargs="+", default=[4, 3, 5])
    ap.add_argument("--corpus", nargs="+", default=["wiki", "news"])
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    model, tok = load_model(args.model)
    start = time.perf_counter()
    quantized, table = quantize_all(model, args.work_dir, args.variant)
    result = {"variant": args.variant, "max_tokens": args.max_tokens, "quantize_s": time.perf_counter() - start,
              "objective_totals": {b: sum(r[b] for r in table.values()) for b in range(SEED, PARENT + 1)},
              "objective_modules": table, "ppl": {}}
    write_json_atomic(args.out, result)
    calib = json.loads((args.work_dir / "calib" / "calib.json").read_text())["config"]
    frac, seed = heldout_split({"calibration": calib})
    streams = heldout_streams(tok, args.corpus, frac, seed, args.max_tokens)
    for b in args.bits:
        set_width(model, quantized, b)
        result["ppl"][b] = {c: perplexity(model, ids, 2048, progress=False) for c, ids in streams.items()}
        print(b, result["ppl"][b], flush=True)
        write_json_atomic(args.out, result)


if __name__ == "__main__":
    main()
