"""Perplexity through the native engine's prefill, int16 tiles against fp32 tiles.

usage: python scripts/ppl_tiles.py ARTIFACT [--bits 3 4 8] [--corpus wiki news]
           [--max-tokens 4096] [--window 2048] [--threads 2] [--out result.json]

Every window of the held-out stream is one engine prefill (`NativeEngine.prompt_logits`,
the head at every position) with tile_rows 1, so every layer call of the prompt runs by the
tile GEMM of the kind under test; the load is the default one (uint8 LUTs, int8 head).
Results are written after every figure.
"""

import argparse
import math
import time

import torch

from anyprec.calibration import heldout_split
from anyprec.engine import NativeEngine
from anyprec.engine.native import TILE_KINDS
from anyprec.fileio import write_json_atomic
from anyprec.packed import read_manifest
from anyprec.perplexity import heldout_streams
from anyprec.runtime import load_anyprec


def engine_perplexity(engine: NativeEngine, ids: torch.Tensor, bits: int, window: int) -> float:
    """exp(mean NLL) over non-overlapping windows (the last one dropped under 2 tokens)."""
    nll, count = 0.0, 0
    for start in range(0, ids.numel(), window):
        chunk = ids[start:start + window]
        if chunk.numel() < 2:
            continue
        logits = engine.prompt_logits(chunk.tolist(), bits)[:-1]
        nll += float(torch.nn.functional.cross_entropy(logits, chunk[1:], reduction="sum"))
        count += chunk.numel() - 1
    return math.exp(nll / count)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifact")
    p.add_argument("--bits", type=int, nargs="+", default=[3, 4, 8])
    p.add_argument("--corpus", nargs="+", default=["wiki", "news"])
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--window", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    apm = load_anyprec(args.artifact, sorted(set(args.bits)), luts="u8")
    frac, seed = heldout_split(read_manifest(args.artifact)["inputs"])
    streams = heldout_streams(apm.tokenizer, args.corpus, frac, seed, args.max_tokens)
    engine = NativeEngine(apm, threads=args.threads)
    engine.tile_rows = 1
    rows = []
    for b in args.bits:
        for corpus, ids in streams.items():
            row = {"bits": b, "corpus": corpus, "tokens": int(ids.numel()), "window": args.window}
            for kind in TILE_KINDS:
                engine.tiles = kind
                start = time.perf_counter()
                row[f"ppl_{kind}"] = engine_perplexity(engine, ids, b, args.window)
                row[f"seconds_{kind}"] = time.perf_counter() - start
            row["change_pct"] = 100 * (row["ppl_int16"] / row["ppl_fp32"] - 1)
            rows.append(row)
            print(f"{b} bits {corpus}: fp32 tiles {row['ppl_fp32']:.4f}, int16 tiles {row['ppl_int16']:.4f} "
                  f"({row['change_pct']:+.4f}%)", flush=True)
            if args.out:
                write_json_atomic(args.out, {"artifact": args.artifact, "rows": rows})


if __name__ == "__main__":
    main()
