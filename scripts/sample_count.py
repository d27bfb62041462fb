"""How many calibration sequences the Fisher needs: one pass over the largest count, the rest free.

    python scripts/sample_count.py --counts 16 32 64 100 --work-dir /tmp/shards-samples \
        --max-tokens 4096 --json /tmp/shards-samples/sample_count.json

The largest count's calibration set is drawn once; its rows are cut at the counts into
consecutive parts, each part's partial Fisher is computed once (timed, per sequence), and
the Fisher of the first k rows is the fixed-order sum of the parts below k (the
calibration-shard reduction, so no sequence is recomputed). Each Fisher is then quantized
(seed + upscaling + packing, timed) and `anyprec ppl` scores every width on both corpora.
Every step skips what a previous run of the same command left done.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from anyprec import stages
from anyprec.archs import quantizable_modules
from anyprec.config import CalibrationConfig, QuantizationConfig
from anyprec.fileio import write_json_atomic
from anyprec.models import load_model
from anyprec.quantize import (CALIB_FILE, SENS_META, calibration_sha256, prepare_calibration, run_packing,
                              run_seed_quantization, run_upscaling)
from anyprec.sensitivity import compute_sensitivity, load_sensitivity, save_sensitivity


def partials(model_ref: str, ids: torch.Tensor, counts: list[int], work: Path) -> dict[str, float]:
    """Partial Fisher of rows [counts[i-1], counts[i]) into work/part_A_B; seconds per sequence each."""
    timing, model = {}, None
    for start, stop in zip([0, *counts[:-1]], counts):
        folder = work / f"part_{start:03d}_{stop:03d}"
        done = folder / "done.json"
        if not done.is_file():
            model = model or load_model(model_ref)[0]
            began = time.monotonic()
            fisher = compute_sensitivity(model, ids[start:stop], quantizable_modules(model), progress=False)
            save_sensitivity(fisher, folder)
            write_json_atomic(done, {"seconds": time.monotonic() - began, "modules": list(fisher)})
        timing[f"{start}-{stop}"] = json.loads(done.read_text())["seconds"] / (stop - start)
        print(f"rows {start}..{stop}: {timing[f'{start}-{stop}']:.2f} s per sequence", flush=True)
    return timing


def prefix_fisher(counts: list[int], upto: int, work: Path, calib_sha: str) -> Path:
    """work/fisher_K: zeros + part 0 + part 1 + ... for the parts below `upto` (fixed order)."""
    folder = work / f"fisher_{upto:03d}"
    if (folder / SENS_META).is_file():
        return folder
    bounds = [(a, b) for a, b in zip([0, *counts[:-1]], counts) if b <= upto]
    names = json.loads((work / f"part_{bounds[0][0]:03d}_{bounds[0][1]:03d}" / "done.json").read_text())["modules"]
    total = {name: None for name in names}
    for start, stop in bounds:
        part = load_sensitivity(work / f"part_{start:03d}_{stop:03d}", names)
        for name in names:
            total[name] = (torch.zeros_like(part[name]) if total[name] is None else total[name]).add_(part[name])
    save_sensitivity(total, folder)
    write_json_atomic(folder / SENS_META, {"key": f"{calib_sha}-first-{upto}", "modules": names})
    return folder


def quantize_from(model_ref: str, fisher: Path, calib: CalibrationConfig, calib_dir: Path, work: Path, upto: int):
    """seed + upscaling + packing from one Fisher; (artifact, seconds)."""
    quant, out = QuantizationConfig(), work / f"packed_{upto:03d}"
    began = time.monotonic()
    seed = run_seed_quantization(model_ref, fisher, quant, work / f"seed_{upto:03d}", progress=False)
    nested = run_upscaling(model_ref, fisher, seed, quant, work / f"nested_{upto:03d}", progress=False)
    if not (out / "manifest.json").is_file():
        base = stages.resolve_base(model_ref)
        inputs = stages.provenance(base, calib.model_copy(update={"n_samples": upto}), quant,
                                   calibration_sha256(calib_dir))
        run_packing(model_ref, nested, quant, out, inputs)
    return out, time.monotonic() - began


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--counts", type=int, nargs="+", default=[16, 32, 64, 100])
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    counts = sorted(set(args.counts))
    calib = CalibrationConfig(n_samples=counts[-1])
    calib_dir = prepare_calibration(args.model, calib, args.work_dir / "calib")
    ids = load_file(str(calib_dir / CALIB_FILE))["input_ids"]
    result = {"counts": counts, "seconds_per_sequence": partials(args.model, ids, counts, args.work_dir), "runs": {}}
    for upto in counts:
        fisher = prefix_fisher(counts, upto, args.work_dir, calibration_sha256(calib_dir))
        artifact, seconds = quantize_from(args.model, fisher, calib, calib_dir, args.work_dir, upto)
        report = args.work_dir / f"ppl_{upto:03d}.json"
        if not report.is_file():
            cli = str(Path(sys.executable).parent / "anyprec")
            subprocess.run([cli, "ppl", str(artifact), "--corpus", "wiki", "news", "--max-tokens",
                            str(args.max_tokens), "--no-base", "--json", str(report)], check=True)
        result["runs"][str(upto)] = {"quantize_seconds": seconds, "ppl": json.loads(report.read_text())}
        write_json_atomic(args.json, result)
        print(f"{upto} sequences: quantized in {seconds:.0f} s, ppl in {report}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
