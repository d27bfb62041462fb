"""`anyprec bench gemv|decode`: kernel and end-to-end speed figures, printed and as JSON.

gemv:   our bitplane-LUT kernel per bit-width vs torch dense fp32/bf16 on one shape,
        from DRAM (weights rotated over buffers larger than the caches) and hot.
decode: generate tokens/s per bit-width on a packed artifact vs the unquantized model.

Wire into the CLI with `add_bench_parser(subparsers)`; `main(argv)` runs standalone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from anyprec.fileio import write_json_atomic

DEFAULT_BITS = (3, 4, 5, 6, 7, 8)
DEFAULT_PROMPT = "The history of the city begins"


def parse_shape(text: str) -> tuple[int, int]:
    """'OUTxIN' -> (out_features, in_features)."""
    try:
        out_s, in_s = text.lower().split("x")
        shape = int(out_s), int(in_s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} is not OUTxIN, e.g. 4096x4096") from None
    if min(shape) < 1:
        raise argparse.ArgumentTypeError(f"shape {text!r} needs positive sizes")
    return shape


def _write_json(path: str | None, payload: dict) -> None:
    if path:
        write_json_atomic(path, payload)


def run_gemv(args: argparse.Namespace) -> int:
    """Measure, print the table, write JSON; returns the exit code."""
    import torch

    from anyprec.kernels.bench_gemv import GemvConfig, format_table, run_gemv_bench

    out_features, in_features = args.shape
    cfg = GemvConfig(
        out_features=out_features, in_features=in_features, bits=tuple(args.bits),
        threads=args.threads or torch.get_num_threads(), repeats=args.repeats,
        rotate_mib=args.rotate_mib, bandwidth_mib=args.bandwidth_mib, backend=args.backend,
    )
    result = run_gemv_bench(cfg)
    print(format_table(result))
    _write_json(args.json, result)
    return 0


def _timed_generate(generate: Callable[..., object], input_ids, new_tokens: int) -> tuple[float, int]:
    """(seconds, tokens produced) of one greedy generate call asking for `new_tokens`."""
    kwargs = {"max_new_tokens": new_tokens, "do_sample": False}
    start = time.perf_counter()
    try:
        out = generate(input_ids, min_new_tokens=new_tokens, **kwargs)
    except TypeError:  # a generate that does not forward min_new_tokens
        start = time.perf_counter()
        out = generate(input_ids, **kwargs)
    seconds = time.perf_counter() - start
    sequences = getattr(out, "sequences", out)
    return seconds, int(sequences.shape[-1] - input_ids.shape[-1])


def decode_rate(generate: Callable[..., object], input_ids, new_tokens: int, repeats: int) -> dict:
    """Decode speed without the prompt: (t(N) - t(1)) / (N - 1), medians over repeats."""
    _timed_generate(generate, input_ids, 2)  # warm-up
    short = statistics.median(_timed_generate(generate, input_ids, 1)[0] for _ in range(repeats))
    runs = [_timed_generate(generate, input_ids, new_tokens) for _ in range(repeats)]
    long_s = statistics.median(s for s, _ in runs)
    produced = min(n for _, n in runs)
    per_token = (long_s - short) / max(produced - 1, 1)
    if per_token <= 0:  # timing noise larger than the decode time: fall back to the whole call
        per_token = long_s / max(produced, 1)
    return {"tokens": produced, "ms_per_token": per_token * 1e3, "tokens_per_s": 1.0 / per_token}


def run_decode(args: argparse.Namespace) -> int:
    """End-to-end greedy decode tokens/s per bit-width and for the unquantized model."""
    import torch

    from anyprec.models import load_model
    from anyprec.runtime import load_anyprec

    if args.threads:
        torch.set_num_threads(args.threads)
    manifest = json.loads((Path(args.dir) / "manifest.json").read_text())
    model = load_anyprec(args.dir)
    input_ids = model.tokenizer(args.prompt, return_tensors="pt").input_ids
    rows = []
    with torch.inference_mode():
        for bits in args.bits:
            gen = lambda ids, _b=bits, **kw: model.generate(ids, precision=_b, **kw)  # noqa: E731
            rows.append({"kind": "anyprec", "bits": bits, **decode_rate(gen, input_ids, args.tokens, args.repeats)})
        del model
        base, _ = load_model(manifest["inputs"]["base_model_ref"])
        base.eval()
        rows.append({"kind": "base_fp32", "bits": 32, **decode_rate(base.generate, input_ids, args.tokens, args.repeats)})
    base_tps = rows[-1]["tokens_per_s"]
    for row in rows:
        row["speedup_vs_base"] = row["tokens_per_s"] / base_tps
    print(f"{'model':<10}{'bits':>5}{'tok/s':>9}{'ms/tok':>9}{'x_base':>8}")
    for r in rows:
        print(f"{r['kind']:<10}{r['bits']:>5}{r['tokens_per_s']:>9.1f}{r['ms_per_token']:>9.2f}{r['speedup_vs_base']:>8.2f}")
    _write_json(args.json, {"dir": str(args.dir), "threads": torch.get_num_threads(), "prompt": args.prompt, "rows": rows})
    return 0


def _add_gemv(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gemv", help="bitplane-LUT mat-vec vs torch dense, per bit-width")
    p.add_argument("--shape", type=parse_shape, default=(4096, 4096), help="OUTxIN (default 4096x4096)")
    p.add_argument("--bits", type=int, nargs="+", default=list(DEFAULT_BITS), choices=range(1, 9))
    p.add_argument("--json", help="write the rows to this JSON file")
    p.add_argument("--threads", type=int, default=0, help="torch/OpenMP threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=30, help="timed calls per figure (median)")
    p.add_argument("--rotate-mib", type=int, default=384, help="weight copies total (exceed the LLC)")
    p.add_argument("--bandwidth-mib", type=int, default=512, help="buffer for the read-bandwidth pass")
    p.add_argument("--backend", choices=["reference", "cpu", "triton"], default=None)
    p.set_defaults(func=run_gemv)


def _add_decode(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("decode", help="end-to-end generate tokens/s per bit-width vs the base model")
    p.add_argument("dir", help="packed artifact directory")
    p.add_argument("--bits", type=int, nargs="+", default=list(DEFAULT_BITS), choices=range(1, 9))
    p.add_argument("--tokens", type=int, default=32, help="new tokens per generate call")
    p.add_argument("--json", help="write the rows to this JSON file")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.set_defaults(func=run_decode)


def add_bench_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `bench gemv|decode` to a CLI's subparsers; the chosen handler is args.func(args)."""
    bench = subparsers.add_parser("bench", help="kernel (gemv) and end-to-end (decode) speed")
    sub = bench.add_subparsers(dest="bench_command", required=True)
    _add_gemv(sub)
    _add_decode(sub)
    return bench


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry: `python -m anyprec.bench gemv ...` (same as `anyprec bench gemv ...`)."""
    parser = argparse.ArgumentParser(prog="anyprec")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *argv] if argv is not None else None)
    return args.func(args)


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
