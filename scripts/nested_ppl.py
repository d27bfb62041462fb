"""Perplexity and per-module objective of a whole model quantized in memory, nested 3..8.

usage: python scripts/nested_ppl.py --work-dir WORK --variant plain|joint:W|look:V|dedicated
           [--bits 4 3 5] [--corpus wiki news] [--max-tokens 4096] [--lut-int8] [--head-int8]
           [--no-objectives] [--layers N] [--token-nll] [--out result.json]
plain reads the nested codes the quantization wrote (WORK/quantized/nested); joint:W
re-runs the seed with joint_weight=W and upscales; look:V keeps the plain seed and upscales
with lookahead_weight=V; dedicated reads the dedicated k-means codes `anyprec frontier` /
`anyprec eval` cached (WORK/baselines/dedicated, one file per module holding every width
asked). Nested weights are set to the fp16-rounded LUT value of each code (what the artifact
stores), dedicated ones to their float32 LUT (as the frontier scores them); results are
written after every width. --token-nll also stores every scored token's NLL (for
scripts/paired_nll.py).
--lut-int8: each LUT row stored as int8 codes on a uniform grid from its min to its max
(per-row fp16 scale and offset); --head-int8: the tied embedding / output head as int8
per row (symmetric, fp16 scale per row). Both simulate a format, they do not change one.
"""

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file

from anyprec import archs
from anyprec.calibration import heldout_split
from anyprec.clustering import quantize_nested, sample_weights, weighted_objective
from anyprec.fileio import write_json_atomic
from anyprec.models import load_model
from anyprec.perplexity import heldout_streams
from anyprec.sensitivity import LAYER_FILE, load_sensitivity

SEED, PARENT = 3, 8


def parse_variant(variant: str) -> tuple[str, float | None]:
    """plain | joint:W | look:V | dedicated -> (kind, weight)."""
    kind, _, value = variant.partition(":")
    if kind in ("plain", "dedicated") and not value:
        return kind, None
    if kind in ("joint", "look") and value:
        return kind, float(value)
    raise SystemExit(f"--variant {variant!r}: use plain, joint:W, look:V or dedicated")


def load_dedicated(model, work: Path, bits: list[int]) -> dict:
    """{module: ({b: codes}, {b: lut})} from the dedicated k-means cache of `anyprec frontier`."""
    out = {}
    for name in archs.quantizable_modules(model):
        path = work / "baselines" / "dedicated" / f"{name}.safetensors"
        stored = load_numpy(str(path)) if path.is_file() else {}
        missing = [b for b in bits if f"codes{b}" not in stored]
        if missing:
            raise SystemExit(f"{path} lacks widths {missing}: run `anyprec frontier ART --rows dedicated "
                             f"--baseline-bits {' '.join(map(str, bits))} --work-dir {work}` first")
        out[name] = ({b: stored[f"codes{b}"] for b in bits}, {b: stored[f"lut{b}"] for b in bits})
    return out


def quantize_all(model, work: Path, variant: str, objectives: bool = True,
                 layers: int | None = None) -> tuple[dict, dict]:
    """({module: (codes, {b: lut})}, {module: {b: objective}}) for every quantized module;
    `layers`: only the first N decoder layers get the variant, the others keep the stored codes."""
    out, table = {}, {}
    for index, names in enumerate(archs.layer_groups(model)):
        kind, weight = parse_variant(variant if layers is None or index < layers else "plain")
        fisher = load_sensitivity(work / "sensitivity", names) if kind != "plain" else None
        stored = load_file(str(work / "quantized" / "nested" / LAYER_FILE.format(index))) if kind == "plain" else None
        for name in names:
            w = archs.get_weight(model.get_submodule(name)).numpy()
            if stored is None:
                f = sample_weights(w, fisher[name].numpy())
                codes, luts = quantize_nested(w, f, SEED, PARENT, joint_weight=weight if kind == "joint" else None,
                                              lookahead_weight=weight if kind == "look" else None)
            else:
                codes = stored[f"{name}.codes"].numpy()
                luts = {b: stored[f"{name}.lut{b}"].numpy() for b in range(SEED, PARENT + 1)}
            out[name] = (codes, luts)
            if stored is None and objectives:  # plain objectives are already in the work dir's nested/objective.json
                table[name] = {b: float(weighted_objective(w, f, codes >> (PARENT - b), luts[b]).sum()) for b in luts}
        print(f"layer {index} quantized", flush=True)
    return out, table


def int8_rows(lut: np.ndarray) -> np.ndarray:
    """LUT rows through int8 with a per-row fp16 offset (the min) and scale ((max - min) / 255)."""
    lo = lut.min(axis=1, keepdims=True).astype(np.float16).astype(np.float32)
    scale = ((lut.max(axis=1, keepdims=True) - lo) / 255).astype(np.float16).astype(np.float32)
    q = np.clip(np.rint((lut - lo) / np.where(scale > 0, scale, 1)), 0, 255)
    return lo + q * scale


def head_int8(model) -> None:
    """The output head's weight (tied to the embedding) through symmetric int8 per row."""
    w = model.get_output_embeddings().weight
    scale = (w.abs().amax(dim=1, keepdim=True) / 127).half().float().clamp_min(1e-12)
    with torch.no_grad():
        w.copy_(torch.clamp(torch.round(w / scale), -127, 127) * scale)


def set_width(model, quantized: dict, bits: int, lut_int8: bool = False) -> None:
    """Write every module's `bits`-wide weights: nested parent codes (an array) at fp16 LUT
    values, or dedicated per-width codes ({b: codes}) at their float32 LUT values."""
    for name, (codes, luts) in quantized.items():
        nested = isinstance(codes, np.ndarray)
        table = luts[bits].astype(np.float16).astype(np.float32) if nested else luts[bits]
        lut = torch.from_numpy(int8_rows(table) if lut_int8 else table)
        width_codes = codes >> (PARENT - bits) if nested else codes[bits]
        w = torch.take_along_dim(lut, torch.from_numpy(width_codes.astype(np.int64)), dim=1)
        archs.set_weight(model.get_submodule(name), w)


@torch.inference_mode()
def token_nll(model, ids: torch.Tensor, window: int = 2048) -> np.ndarray:
    """NLL of every predicted token, f64[T - windows], over non-overlapping windows of `ids`:
    the tokens of anyprec.perplexity.perplexity (exp(mean) is its value up to float rounding)."""
    parts = []
    for start in range(0, ids.numel(), window):
        chunk = ids[start : start + window]
        if chunk.numel() < 2:
            continue
        logits = model(chunk.unsqueeze(0)).logits[0, :-1].float()
        parts.append(torch.nn.functional.cross_entropy(logits, chunk[1:], reduction="none").double().numpy())
    return np.concatenate(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work-dir", required=True, type=Path)
    ap.add_argument("--variant", required=True)
    ap.add_argument("--model", default="default")
    ap.add_argument("--bits", type=int, nargs="+", default=[4, 3, 5])
    ap.add_argument("--corpus", nargs="+", default=["wiki", "news"])
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--lut-int8", action="store_true")
    ap.add_argument("--head-int8", action="store_true")
    ap.add_argument("--no-objectives", action="store_true", help="skip the objective table (faster)")
    ap.add_argument("--layers", type=int, default=None, help="variant in the first N decoder layers only")
    ap.add_argument("--token-nll", action="store_true", help="store every token's NLL (scripts/paired_nll.py)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    model, tok = load_model(args.model)
    if args.head_int8:
        head_int8(model)
    start = time.perf_counter()
    if parse_variant(args.variant)[0] == "dedicated":
        quantized, table = load_dedicated(model, args.work_dir, args.bits), {}
    else:
        quantized, table = quantize_all(model, args.work_dir, args.variant, not args.no_objectives, args.layers)
    result = {"variant": args.variant, "layers": args.layers, "lut_int8": args.lut_int8, "head_int8": args.head_int8,
              "max_tokens": args.max_tokens, "quantize_s": time.perf_counter() - start,
              "objective_totals": {b: sum(r[b] for r in table.values()) for b in range(SEED, PARENT + 1)} if table else None,
              "objective_modules": table, "ppl": {}, "token_nll": {}}
    write_json_atomic(args.out, result)
    calib = json.loads((args.work_dir / "calib" / "calib.json").read_text())["config"]
    frac, seed = heldout_split({"calibration": calib})
    streams = heldout_streams(tok, args.corpus, frac, seed, args.max_tokens)
    for b in args.bits:
        set_width(model, quantized, b, args.lut_int8)
        nll = {c: token_nll(model, ids) for c, ids in streams.items()}
        result["ppl"][b] = {c: math.exp(float(v.mean())) for c, v in nll.items()}
        if args.token_nll:
            result["token_nll"][b] = {c: v.tolist() for c, v in nll.items()}
        print(b, result["ppl"][b], flush=True)
        write_json_atomic(args.out, result)


if __name__ == "__main__":
    main()
