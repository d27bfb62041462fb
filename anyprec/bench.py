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


def decode_rates(
    candidates: Sequence[tuple[dict, Callable[..., object]]], input_ids, new_tokens: int, repeats: int,
    progress: bool = True,
) -> list[dict]:
    """Greedy decode speed of each (row, generate) candidate, without the prompt.

    One round times every candidate once, in an order that rotates from round to round, so
    load from other processes on a shared machine falls on all of them alike. Per round
    and candidate: (t(N tokens) - t(1 token)) / (N - 1); the row gets the median over
    `repeats` rounds (and the spread, as min/max)."""
    from tqdm.auto import tqdm

    for _, generate in candidates:
        _timed_generate(generate, input_ids, 2)  # warm-up: first-call allocations, lazy imports
    per_token: list[list[float]] = [[] for _ in candidates]
    produced = [new_tokens] * len(candidates)
    order = list(range(len(candidates)))
    for round_ in tqdm(range(repeats), desc="decode rounds", disable=not progress):
        for i in order[round_ % len(order):] + order[: round_ % len(order)]:
            short, _ = _timed_generate(candidates[i][1], input_ids, 1)
            long_s, n = _timed_generate(candidates[i][1], input_ids, new_tokens)
            produced[i] = min(produced[i], n)
            # noise larger than the decode time: fall back to the whole call
            per_token[i].append((long_s - short) / (n - 1) if long_s > short and n > 1 else long_s / max(n, 1))
    rows = []
    for (row, _), times, n in zip(candidates, per_token, produced):
        ms = statistics.median(times) * 1e3
        rows.append({**row, "tokens": n, "rounds": repeats, "ms_per_token": ms, "tokens_per_s": 1e3 / ms,
                     "ms_per_token_min": min(times) * 1e3, "ms_per_token_max": max(times) * 1e3})
    return rows


def measure_decode(
    packed_dir: str | Path, base_ref: str, bits: Sequence[int], new_tokens: int, repeats: int,
    prompt: str = DEFAULT_PROMPT,
) -> list[dict]:
    """Decode rows per bit-width of the packed model and for the unquantized fp32 model
    (`base_ref`: a registry name or a directory), measured together in interleaved rounds;
    each row has `speedup_vs_base`."""
    import torch

    from anyprec.models import load_model
    from anyprec.runtime import load_anyprec

    model = load_anyprec(packed_dir, list(bits))
    base, _ = load_model(base_ref)
    base.eval()
    input_ids = model.tokenizer(prompt, return_tensors="pt").input_ids
    candidates: list[tuple[dict, Callable[..., object]]] = [
        ({"kind": "anyprec", "bits": b}, lambda ids, _b=b, **kw: model.generate(ids, precision=_b, **kw))
        for b in bits
    ]
    candidates.append(({"kind": "base_fp32", "bits": 32}, base.generate))
    with torch.inference_mode():
        rows = decode_rates(candidates, input_ids, new_tokens, repeats)
    base_tps = rows[-1]["tokens_per_s"]
    for row in rows:
        row["speedup_vs_base"] = row["tokens_per_s"] / base_tps
    return rows


def run_decode(args: argparse.Namespace) -> int:
    """End-to-end greedy decode tokens/s per bit-width and for the unquantized model."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    manifest = json.loads((Path(args.dir) / "manifest.json").read_text())
    rows = measure_decode(args.dir, manifest["inputs"]["base_model_ref"], args.bits, args.tokens, args.repeats,
                          args.prompt)
    print(f"median of {args.repeats} interleaved rounds; ms/tok range over rounds in brackets")
    print(f"{'model':<10}{'bits':>5}{'tok/s':>9}{'ms/tok':>9}{'[min, max]':>18}{'x_base':>8}")
    for r in rows:
        spread = f"[{r['ms_per_token_min']:.1f}, {r['ms_per_token_max']:.1f}]"
        print(f"{r['kind']:<10}{r['bits']:>5}{r['tokens_per_s']:>9.1f}{r['ms_per_token']:>9.2f}{spread:>18}"
              f"{r['speedup_vs_base']:>8.2f}")
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
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds (median)")
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
