"""`anyprec` command line: quantize, info, ppl, generate, bench, eval.

Heavy imports happen inside the subcommands so `anyprec --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from anyprec.resident import DEFAULT_LUTS

BITS_HELP = "bit-widths, e.g. --bits 3 4 5 6 7 8 (default: every bit-width the artifact holds)"
PLAN_HELP = "; 4.5, a stored plan's name or a plan JSON file (`anyprec plan`) runs a precision plan"


QUANTIZE_FLAGS = {"seed_bits": "--seed-bits", "parent_bits": "--parent-bits", "method": "--method", "corpus": "--corpus",
                  "n_samples": "--samples", "seq_len": "--seq-len", "seed": "--seed", "sensitivity": "--sensitivity",
                  "lookahead_weight": "--lookahead-weight"}


def cmd_quantize(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from anyprec.config import CalibrationConfig, QuantizationConfig, validation_message
    from anyprec.errors import UsageError
    from anyprec.quantize import quantize_model

    try:
        calib = CalibrationConfig(corpus=args.corpus, n_samples=args.samples, seq_len=args.seq_len, seed=args.seed)
        chosen = {} if args.lookahead_weight is None else {"lookahead_weight": _weight_or_none(args.lookahead_weight)}
        quant = QuantizationConfig(seed_bits=args.seed_bits, parent_bits=args.parent_bits, method=args.method,
                                   sensitivity=args.sensitivity, **chosen)
    except ValidationError as err:
        raise UsageError(validation_message(err, QUANTIZE_FLAGS)) from None
    out = quantize_model(args.model, args.out, calib, quant, work_dir=args.work_dir, force=args.force)
    print(f"wrote {out}")
    return cmd_info(argparse.Namespace(dir=out, json=False, verify=False, bits=None, luts=DEFAULT_LUTS))


def _weight_or_none(text: str) -> float | None:
    """A clustering weight flag: a number, or `none` for the plain (paper) algorithm."""
    from anyprec.errors import UsageError

    if text.lower() in ("none", "null"):
        return None
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"--lookahead-weight {text!r} is not a number: give e.g. 0.25, or none for plain splits") from None


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f}"


LUT_FORM_HELP = {"u8": "uint8 LUTs + per-row lo/scale, int8 head and tied embedding",
                 "fp16": "the artifact's fp16 LUTs and dense tensors, exact"}


def _add_luts_flag(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--luts", choices=list(LUT_FORM_HELP), default=DEFAULT_LUTS,
                        help=f"{what}: " + "; ".join(f"{k}: {v}" for k, v in LUT_FORM_HELP.items())
                        + " (default: %(default)s)")


def cmd_info(args: argparse.Namespace) -> int:
    from anyprec.packed import artifact_sizes, check_headers, read_manifest, verify_files
    from anyprec.precision import check_precisions, memory_bytes

    manifest = read_manifest(args.dir)
    verify_files(args.dir, manifest, hashes=args.verify)
    check_headers(args.dir, manifest)
    checked = ("verified: every file's size and sha256 match the manifest" if args.verify else
               "checked sizes and tensor headers only (add --verify to check every file's sha256)")
    sizes = artifact_sizes(args.dir, args.luts)
    chosen = {str(v): memory_bytes(args.dir, v, sizes) for v in check_precisions(args.bits, args.dir)} \
        if args.bits else None
    if args.json:
        extra = {"precisions": chosen} if chosen else {}
        print(json.dumps({"sizes": sizes, "manifest": manifest, "verified": bool(args.verify), **extra},
                         indent=2, sort_keys=True))
        return 0
    print(f"artifact {args.dir}: {manifest['model_type']}, bits {manifest['seed_bits']}..{manifest['parent_bits']}, "
          f"{len(manifest['modules'])} quantized modules, {sizes['quantized_params']:,} quantized weights, "
          f"method {manifest.get('method', '?')}")
    print(f"base model: {manifest['inputs'].get('base_model_ref')}")
    print(checked)
    print(f"bytes in memory as loaded with luts={args.luts} ({LUT_FORM_HELP[args.luts]})")
    print(f"{'bits':>6} {'codes MiB':>11} {'LUTs MiB':>10} {'dense MiB':>10} {'total MiB':>10} {'bytes':>14}")
    for b, row in sizes["per_bits"].items():
        print(f"{b:>6} {_mib(row['codes']):>11} {_mib(row['luts']):>10} {_mib(row['dense']):>10} "
              f"{_mib(row['total']):>10} {row['total']:>14,}")
    art = sizes["artifact"]
    print(f"{'all':>6} {_mib(art['codes']):>11} {_mib(art['luts']):>10} {_mib(art['dense']):>10} "
          f"{_mib(art['total']):>10} {art['total']:>14,}   <- one artifact, every bit-width")
    print(f"{len(sizes['per_bits'])} separately packed models: {_mib(sizes['separate_sum'])} MiB "
          f"(artifact = {art['total'] / sizes['separate_sum']:.2f} x that); "
          f"fp16 model: {_mib(sizes['fp16_model'])} MiB; files on disk: {_mib(sizes['files_on_disk'])} MiB")
    plans = [name.removesuffix(".json") for name in manifest.get("plans", {})]
    if plans:
        print(f"stored plans (--bits NAME): {', '.join(plans)}")
    for label, row in (chosen or {}).items():
        print(f"--bits {label}: {row['avg_bits']:.3f} average bits, {row['total']:,} bytes in memory "
              f"({_mib(row['total'])} MiB: {row['quantized']:,} codes + LUTs, {row['dense']:,} dense)")
    return 0


def _texts(args: argparse.Namespace, manifest: dict) -> dict[str, str]:
    if args.text:
        texts = {}
        for path in args.text:
            try:
                texts[Path(path).name] = Path(path).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                raise SystemExit(f"error: cannot read --text {path} as UTF-8 text: {err}") from None
        return texts
    from anyprec.calibration import heldout_split, heldout_text

    frac, seed = heldout_split(manifest["inputs"])
    return {corpus: heldout_text(corpus, frac, seed) for corpus in args.corpus}


def _precision_tag(label: str) -> str:
    """How a --bits value is printed: `4-bit`, `4.5-bit`, or a plan's name or file as given."""
    from anyprec.precision import parse_precision

    return label if isinstance(parse_precision(label), str) else f"{label}-bit"


def cmd_ppl(args: argparse.Namespace) -> int:
    from anyprec.fileio import write_json_atomic
    from anyprec.models import load_model
    from anyprec.perplexity import evaluate_perplexity, perplexity, tokenize_text
    from anyprec.precision import load_with_precisions

    apm, bits = load_with_precisions(args.dir, args.bits, luts=args.luts)
    texts = _texts(args, apm.manifest)
    results: dict[str, Any] = {"artifact": str(args.dir), "window": args.window, "max_tokens": args.max_tokens,
                               "luts": args.luts, "bits": {}}
    if not args.no_base:
        base, tok = load_model(apm.manifest["inputs"]["base_model_ref"])
        results["base"] = {n: perplexity(base, tokenize_text(tok, t)[: args.max_tokens], args.window, desc=f"ppl {n} base")
                           for n, t in texts.items()}
        del base
    per_bits = evaluate_perplexity(apm, bits, texts, args.window, max_tokens=args.max_tokens)
    results["bits"] = per_bits
    names, tags = list(texts), {b: _precision_tag(b) for b in bits}
    width = max([8, *map(len, tags.values())])
    print(f"{'model':>{width}} " + " ".join(f"{n:>14}" for n in names))
    if "base" in results:
        print(f"{'base':>{width}} " + " ".join(f"{results['base'][n]:>14.3f}" for n in names))
    for b in bits:
        print(f"{tags[b]:>{width}} " + " ".join(f"{per_bits[b][n]:>14.3f}" for n in names))
    if args.json:
        write_json_atomic(args.json, results)
        print(f"wrote {args.json}")
    return 0


def generation_budget(prompt_tokens: int, wanted: int, context: int | None) -> int:
    """New tokens to generate: `wanted`, capped so prompt + output fit the model's context."""
    from anyprec.errors import UsageError

    if context is None:
        return wanted
    room = context - prompt_tokens
    if room < 1:
        raise UsageError(f"--prompt is {prompt_tokens} tokens, the model's context is {context}: shorten the prompt")
    if wanted > room:
        print(f"note: --max-new-tokens {wanted} capped to {room}: the model's context is {context} tokens "
              f"and the prompt uses {prompt_tokens}", file=sys.stderr)
    return min(wanted, room)


def cmd_generate(args: argparse.Namespace) -> int:
    from transformers import TextStreamer

    from anyprec.errors import UsageError
    from anyprec.models import context_length
    from anyprec.precision import load_with_precisions

    if not args.prompt.strip():
        raise UsageError("--prompt is empty: give the text to continue, e.g. --prompt 'The capital of France is'")
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens {args.max_new_tokens}: give at least 1")
    apm, precisions = load_with_precisions(args.dir, args.bits)
    tok = apm.tokenizer
    ids = tok(args.prompt, return_tensors="pt")
    budget = generation_budget(ids["input_ids"].shape[1], args.max_new_tokens, context_length(args.dir))
    for label, precision in precisions.items():
        print(f"[{_precision_tag(label)}] {args.prompt}", end="", flush=True)
        # the streamer prints each piece of text as soon as it is decoded, and the final newline
        streamer = TextStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        apm.generate(**ids, precision=precision, max_new_tokens=budget, do_sample=False, streamer=streamer,
                     pad_token_id=tok.pad_token_id or tok.eos_token_id)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from anyprec.config import CalibrationConfig, EvaluationConfig, GenerationConfig, QuantizationConfig

    # defaults live in the typed params only
    calib, quant, evaluation = CalibrationConfig(), QuantizationConfig(), EvaluationConfig()
    parser = argparse.ArgumentParser(prog="anyprec", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quantize", help="quantize a model once into a 3..8-bit any-precision artifact")
    q.add_argument("model", help="local HF model directory, or 'smollm2-135m' (the embedded default)")
    q.add_argument("--out", required=True, help="artifact directory to write")
    q.add_argument("--seed-bits", type=int, default=quant.seed_bits)
    q.add_argument("--parent-bits", type=int, default=quant.parent_bits)
    q.add_argument("--method", choices=["optimal", "lloyd"], default=quant.method,
                   help="clustering: exact optimal (default) or the reference's Lloyd/binary-search")
    q.add_argument("--corpus", choices=["wiki", "news"], default=calib.corpus, help="calibration corpus")
    q.add_argument("--samples", type=int, default=calib.n_samples, help="calibration sequences (%(default)s)")
    q.add_argument("--seq-len", type=int, default=calib.seq_len, help="tokens per calibration sequence (%(default)s)")
    q.add_argument("--seed", type=int, default=calib.seed, help="calibration sampling seed")
    q.add_argument("--work-dir", default=None, help="intermediate results (default: a cache folder; resumable)")
    q.add_argument("--force", action="store_true",
                   help="replace an existing anyprec artifact at --out (any other non-empty folder is refused)")
    q.add_argument("--sensitivity", choices=["auto", "streamed", "whole"], default=quant.sensitivity,
                   help="Fisher pass: streamed holds one decoder layer at a time (default auto: when RAM needs it)")
    q.add_argument("--lookahead-weight", default=None, metavar="V|none",
                   help=f"look-ahead upscaling weight (default {quant.lookahead_weight} with --method optimal; "
                        "none: each split best for its own width, as the paper)")
    q.set_defaults(func=cmd_quantize)

    i = sub.add_parser("info", help="bit-widths, bytes per bit-width and total, manifest")
    i.add_argument("dir")
    i.add_argument("--json", action="store_true", help="print sizes and manifest as JSON")
    i.add_argument("--verify", action="store_true", help="check every file's sha256 against the manifest")
    i.add_argument("--bits", nargs="+", default=None,
                   help="also print the bytes in memory at these precisions (3, 4.5, a plan's name or file)")
    _add_luts_flag(i, "count the bytes of this resident form")
    i.set_defaults(func=cmd_info)

    p = sub.add_parser("ppl", help="perplexity per bit-width (and of the base model) on held-out text")
    p.add_argument("dir")
    p.add_argument("--bits", nargs="+", default=None, help=BITS_HELP + PLAN_HELP)
    p.add_argument("--text", nargs="+", default=None, help="UTF-8 text file(s) (default: held-out corpora)")
    p.add_argument("--corpus", nargs="+", choices=["wiki", "news"], default=list(evaluation.ppl_corpora),
                   help="held-out corpora when no --text is given (default: %(default)s)")
    p.add_argument("--window", type=int, default=evaluation.ppl_window,
                   help="window length (capped at the model's context)")
    p.add_argument("--max-tokens", type=int, default=evaluation.ppl_max_tokens,
                   help="score only the first N tokens of each text (default: all; bounds CPU time)")
    p.add_argument("--no-base", action="store_true", help="skip the base model's perplexity")
    p.add_argument("--json", default=None, help="write results (base included) to this JSON file")
    _add_luts_flag(p, "load in this resident form")
    p.set_defaults(func=cmd_ppl)

    g = sub.add_parser("generate", help="greedy generation at one or more bit-widths")
    g.add_argument("dir")
    g.add_argument("--bits", nargs="+", default=None, help=BITS_HELP + PLAN_HELP)
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=GenerationConfig().max_new_tokens)
    g.set_defaults(func=cmd_generate)

    for module, hook in (("anyprec.bench", "add_bench_parser"), ("anyprec.eval_cli", "add_eval_parser"),
                         ("anyprec.serving.cli", "add_serve_parser"), ("anyprec.plans", "add_plan_parser"),
                         ("anyprec.rehearse", "add_rehearse_parser"), ("anyprec.frontier", "add_frontier_parser")):
        try:
            getattr(importlib.import_module(module), hook)(sub)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
    return parser


def _raised_by_us(err: BaseException) -> bool:
    """True if the innermost frame of err's traceback is anyprec code (a deliberate raise)."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
    return module == "anyprec" or module.startswith("anyprec.")


def user_error(err: BaseException) -> tuple[str, int] | None:
    """(message, exit code) for an error meant for the user; None for a bug (keeps its traceback)."""
    from anyprec.errors import EXIT_INPUT, AnyprecError, system_error

    if isinstance(err, AnyprecError):
        return str(err), err.exit_code
    if isinstance(err, OSError) and (converted := system_error(err)) is not None:
        return str(converted), converted.exit_code
    # ValueError / FileNotFoundError raised on purpose by anyprec code, with a message for the user
    if isinstance(err, (ValueError, FileNotFoundError)) and _raised_by_us(err):
        return str(err), EXIT_INPUT
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("gensim", "httpx", "numba"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except Exception as err:
        reported = user_error(err)
        if reported is None:
            raise
        print(f"error: {reported[0]}", file=sys.stderr)
        return reported[1]


if __name__ == "__main__":
    sys.exit(main())
