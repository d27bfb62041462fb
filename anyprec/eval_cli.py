"""`anyprec eval DIR`: every method at every bit-width on a packed artifact's base model.

The artifact's manifest names the base model and the calibration/quantization settings
(inputs.base_model_ref, inputs.calibration, inputs.quantization); the sensitivity is
reused from the quantization work folder when present, else recomputed there, so the
baselines see exactly the calibration the artifact was built from.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from anyprec.config import EvaluationConfig
from anyprec.evaluation.baselines import DEFAULT_METHODS, Method
from anyprec.evaluation.bigbench import PromptStyle

log = logging.getLogger(__name__)
DEFAULTS = EvaluationConfig()  # params.yaml's `evaluation` defaults, the one place they live
FLAGS = {"bits": "--bits", "tasks": "--tasks", "limit": "--limit", "ppl_corpora": "--corpus", "ppl_window": "--window",
         "ppl_max_tokens": "--ppl-max-tokens", "batch_size": "--batch-size", "prompt_style": "--prompt-style",
         "bigbench_source": "--bigbench-source"}


def add_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `eval` subcommand on an argparse subparsers object; sets func=run_eval."""
    p = subparsers.add_parser("eval", help="perplexity + zero-shot + baselines per bit-width",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", type=Path, help="packed artifact directory (manifest.json)")
    p.add_argument("--bits", nargs="+", default=list(DEFAULTS.bits),
                   help="bit-widths, and fractional precisions (4.5: a precision plan, evaluated for ours only)")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                   choices=[m.value for m in Method])
    p.add_argument("--tasks", nargs="*", default=list(DEFAULTS.tasks),
                   help="BIG-bench specs (bb_step_inference, social_iqa, cause_and_effect:two_sentences, "
                        "bigbench:<task>) or lm-eval task names with local data (arc_easy, ...); none: skip")
    p.add_argument("--limit", type=int, default=DEFAULTS.limit, help="examples per task (0: all)")
    p.add_argument("--corpus", nargs="*", default=list(DEFAULTS.ppl_corpora), choices=["wiki", "news"],
                   help="held-out perplexity corpora (none: skip perplexity)")
    p.add_argument("--window", type=int, default=DEFAULTS.ppl_window,
                   help="perplexity window (capped at the context)")
    p.add_argument("--ppl-max-tokens", type=int, default=DEFAULTS.ppl_max_tokens,
                   help="truncate each corpus to N tokens")
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="lm-eval batch size")
    p.add_argument("--bigbench-source", default=DEFAULTS.bigbench_source,
                   help="bigbench-1.0.0.tar.gz or its unpacked tree (default: cache, else pip download)")
    p.add_argument("--prompt-style", default=DEFAULTS.prompt_style, choices=[s.value for s in PromptStyle],
                   help="BIG-bench prompts: choices scored as continuations (completion) or "
                        "BIG-bench's own format with the choices listed (bigbench)")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="calibration/sensitivity folder (default: the quantization run's cache folder)")
    p.add_argument("--json", type=Path, default=None, help="write the report (with deltas) here")
    p.add_argument("--markdown", type=Path, default=None, help="write the markdown tables here")
    p.add_argument("--plots", type=Path, default=None, help="write <metric>.png plots into this folder")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_eval)
    return p


def _work_dir(inputs: dict[str, Any]) -> Path:
    """The folder quantize_model used for this artifact's calibration and sensitivity."""
    from anyprec.config import CalibrationConfig, QuantizationConfig
    from anyprec.stages import work_dir

    calib = CalibrationConfig(**inputs["calibration"])
    quant = QuantizationConfig.from_dump(inputs["quantization"])
    return work_dir(inputs["base_model_sha256"], calib, quant)


def load_fisher(manifest: dict[str, Any], work: Path, progress: bool) -> tuple[dict, str]:
    """(Fisher of every quantized module, sensitivity key) for the artifact's calibration.

    Reused from work/sensitivity when up to date, else computed there. The key names the
    base model and calibration. Raises ValueError if the calibration rebuilt here differs
    from the artifact's (hash).
    """
    from anyprec import quantize
    from anyprec.config import CalibrationConfig
    from anyprec.sensitivity import load_sensitivity

    inputs = manifest["inputs"]
    ref = inputs["base_model_ref"]
    calib_dir = work / "calib"
    if not (calib_dir / quantize.CALIB_META).is_file():
        quantize.prepare_calibration(ref, CalibrationConfig(**inputs["calibration"]), calib_dir)
    digest = quantize.calibration_sha256(calib_dir)
    if inputs.get("calibration_sha256") not in (None, digest):
        raise ValueError(f"calibration in {calib_dir} (sha256 {digest[:12]}) differs from the artifact's "
                         f"({inputs['calibration_sha256'][:12]}); pass --work-dir to a fresh folder")
    sens_dir = quantize.run_sensitivity(ref, calib_dir, work / "sensitivity", progress)
    key = json.loads((sens_dir / quantize.SENS_META).read_text())["key"]
    return load_sensitivity(sens_dir, list(manifest["modules"])), key


def settings_from_args(args: argparse.Namespace, artifact_dir: str | Path) -> EvaluationConfig:
    """The EvaluationConfig of the CLI flags; --bits checked against the artifact (anyprec.precision)."""
    from pydantic import ValidationError

    from anyprec.config import validation_message
    from anyprec.errors import UsageError
    from anyprec.precision import check_precisions

    bits = check_precisions(args.bits, artifact_dir, "--bits")
    try:
        return EvaluationConfig(
            bits=bits, tasks=args.tasks, limit=args.limit or None, ppl_corpora=args.corpus, ppl_window=args.window,
            ppl_max_tokens=args.ppl_max_tokens, batch_size=args.batch_size, prompt_style=args.prompt_style,
            bigbench_source=args.bigbench_source)
    except ValidationError as err:
        raise UsageError(validation_message(err, FLAGS)) from None


def evaluate_artifact(artifact_dir: str | Path, config: EvaluationConfig, methods: list[str] = DEFAULT_METHODS,
                      work_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """The full report (runner.run_evaluation) for a packed artifact and its base model.

    work_dir: where the artifact's calibration/sensitivity live or go (default: the
    quantization run's cache folder, so nothing is recomputed after `anyprec quantize`);
    baseline quantizations are cached in work_dir/baselines.
    """
    from anyprec.evaluation.runner import run_evaluation
    from anyprec.models import load_model
    from anyprec.packed import read_manifest
    from anyprec.precision import loadable_bits
    from anyprec.runtime import load_anyprec

    manifest = read_manifest(artifact_dir)
    work = Path(work_dir) if work_dir else _work_dir(manifest["inputs"])
    fisher, sens_key = load_fisher(manifest, work, progress)
    # Baseline quantizations depend on the weights, Fisher and nesting range only.
    cache = work / "baselines", f"{sens_key}|{manifest['seed_bits']}|{manifest['parent_bits']}"
    model, tokenizer = load_model(manifest["inputs"]["base_model_ref"])
    ours = Method.OURS.value in methods
    artifact = load_anyprec(artifact_dir, bits=loadable_bits(config.bits)) if ours else None
    report = run_evaluation(model, tokenizer, fisher, config, manifest, methods, artifact, cache, progress)
    report["artifact"] = str(Path(artifact_dir).resolve())
    report["base_model_ref"] = manifest["inputs"]["base_model_ref"]
    return report


def run_eval(args: argparse.Namespace) -> int:
    """Run the evaluation, print the markdown tables, write --json/--markdown/--plots."""
    from anyprec.evaluation import table

    config = settings_from_args(args, args.dir)
    report = evaluate_artifact(args.dir, config, args.methods, args.work_dir, progress=not args.no_progress)
    print(table.markdown_report(report))
    if args.json:
        table.write_json(report, args.json)
    if args.markdown:
        table.write_markdown(report, args.markdown)
    if args.plots:
        for metric in [m for m in table.metric_names(report) if not m.startswith("acc_norm")] + ["objective"]:
            table.plot_metric(report, metric, Path(args.plots) / f"{metric}.png")
    return 0
