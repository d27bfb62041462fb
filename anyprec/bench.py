"""`anyprec bench gemv|decode|prefill|batch`: kernel and end-to-end speed, printed and as JSON.

gemv:    our bitplane-LUT kernel per bit-width vs torch dense fp32/bf16 on one shape,
         from DRAM (weights rotated over buffers larger than the caches) and hot.
decode:  generate tokens/s per bit-width on a packed artifact vs the unquantized model;
         `--engine native` times the native engine's steps (`--vs llamacpp`: and llama.cpp's).
prefill, batch: prompt tok/s and mixed-precision batch throughput (anyprec.bench_engine).

Wire into the CLI with `add_bench_parser(subparsers)`; `main(argv)` runs standalone.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from anyprec.config import BenchmarkConfig
from anyprec.fileio import write_json_atomic

DEFAULTS = BenchmarkConfig()  # params.yaml's `benchmark` defaults, the one place they live
DEFAULT_BITS = tuple(DEFAULTS.bits)
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


class StepTimer:
    """A transformers streamer that timestamps every token `generate` emits.

    generate calls `put` once with the prompt, then once per new token; the gaps between
    the new tokens' timestamps are the decode steps (the first new token's gap would hold
    the prompt's prefill, so it is not one). `on_token(i)` runs after token i is stamped
    (i = 0: the prompt), before the step that produces token i + 1."""

    def __init__(self, on_token: Callable[[int], None] | None = None) -> None:
        self.stamps: list[float] = []
        self.on_token = on_token

    def put(self, value) -> None:
        self.stamps.append(time.perf_counter())
        if self.on_token is not None:
            self.on_token(len(self.stamps) - 1)

    def end(self) -> None:
        pass

    def step_seconds(self) -> list[float]:
        """Seconds of each decode step: gaps between consecutive new tokens."""
        new = self.stamps[1:]  # stamps[0] is the prompt
        return [b - a for a, b in zip(new, new[1:])]


def _decode_steps(generate: Callable[..., object], input_ids, new_tokens: int) -> list[float]:
    """Seconds of each greedy decode step of one generate call asking for `new_tokens`."""
    timer = StepTimer()
    generate(input_ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, streamer=timer)
    return timer.step_seconds()


def rotating_decode_steps(model, bits: Sequence[int] | Mapping[Any, Any], input_ids, tokens_per_bits: int,
                          block: int = 4) -> dict[Any, list[float]]:
    """Decode-step seconds per precision from ONE generate call that switches the model's
    precision every `block` steps, cycling through `bits` until each had `tokens_per_bits`.
    bits: widths (each its own key) or {key: precision} (a Plan from anyprec.precision for 4.5).

    Slow phases of a shared machine (seconds long) then fall on every bit-width alike,
    which separate calls per bit-width cannot ensure. The first step of each block is
    dropped: it runs with the previous bit-width's planes in the caches. Every kept step is
    a whole decode step (all layers) at its bit-width; the tokens are not used."""
    precisions = bits if isinstance(bits, Mapping) else {b: b for b in bits}
    block = max(2, min(block, tokens_per_bits))
    cycles = -(-tokens_per_bits // block)
    schedule = [b for _ in range(cycles) for b in precisions for _ in range(block)]  # key of step -> token i+1
    previous = model.current_plan or model.current_precision

    def switch(i: int) -> None:
        model.set_precision(precisions[schedule[min(i, len(schedule) - 1)]])

    timer = StepTimer(on_token=switch)
    try:
        model.generate(input_ids, max_new_tokens=len(schedule), min_new_tokens=len(schedule), do_sample=False,
                       streamer=timer)
    finally:
        model.set_precision(previous)
    steps: dict[Any, list[float]] = {b: [] for b in precisions}
    # step_seconds()[j] produced token j + 2, computed at schedule[j + 1]
    for j, seconds in enumerate(timer.step_seconds()):
        if schedule[j + 1] == schedule[j]:  # not the first step after a switch
            steps[schedule[j + 1]].append(seconds)
    return steps


def step_spread(times: Sequence[float], method: str = "inclusive") -> dict:
    """Median and 10th/90th percentile of `times` (seconds), as milliseconds."""
    if not times:
        raise ValueError("nothing was timed; ask for more tokens or rounds")
    deciles = statistics.quantiles(times, n=10, method=method) if len(times) > 1 else list(times) * 9
    return {"ms": statistics.median(times) * 1e3, "ms_p10": deciles[0] * 1e3, "ms_p90": deciles[-1] * 1e3,
            "timed": len(times)}


def _step_row(row: dict, times: list[float], rounds: int) -> dict:
    """A decode row from its step times: median step, 10th/90th percentile."""
    if not times:
        raise ValueError(f"no decode step was timed for {row}; ask for more new tokens")
    s = step_spread(times, method="exclusive")
    return {**row, "rounds": rounds, "steps_timed": len(times), "ms_per_token": s["ms"], "tokens_per_s": 1e3 / s["ms"],
            "ms_per_token_p10": s["ms_p10"], "ms_per_token_p90": s["ms_p90"]}


def measure_decode(
    packed_dir: str | Path, base_ref: str, bits: Sequence[Any], new_tokens: int, repeats: int,
    prompt: str = DEFAULT_PROMPT, progress: bool = True,
) -> list[dict]:
    """Greedy decode speed per precision of the packed model (bits: widths, fractional
    averages such as 4.5, plan names or files, checked by anyprec.precision) and of the
    unquantized fp32 model (`base_ref`: a registry name or a directory), prompt excluded;
    each row has `speedup_vs_base`.

    Every decode step is timed on its own (StepTimer) and a row's figure is its median step.
    Each of `repeats` rounds runs the base model for `new_tokens` tokens and one generate
    call of the packed model rotating through the bit-widths (rotating_decode_steps,
    `new_tokens` tokens each), in alternating order."""
    import torch
    from tqdm.auto import tqdm

    from anyprec.models import load_model
    from anyprec.precision import load_with_precisions, parse_precision

    model, precisions = load_with_precisions(packed_dir, list(bits))
    base, _ = load_model(base_ref)
    base.eval()
    input_ids = model.tokenizer(prompt, return_tensors="pt").input_ids
    quantized: dict[str, list[float]] = {b: [] for b in precisions}
    base_steps: list[float] = []
    with torch.inference_mode():
        _decode_steps(base.generate, input_ids, 2)  # warm-up: first-call allocations, lazy imports
        rotating_decode_steps(model, precisions, input_ids, 2, block=2)
        for round_ in tqdm(range(repeats), desc="decode rounds", disable=not progress):
            runs = [lambda: base_steps.extend(_decode_steps(base.generate, input_ids, new_tokens)),
                    lambda: [quantized[b].extend(t) for b, t in
                             rotating_decode_steps(model, precisions, input_ids, new_tokens).items()]]
            for run in runs if round_ % 2 == 0 else runs[::-1]:
                run()
    rows = [_step_row({"kind": "anyprec", "bits": parse_precision(b), "tokens": new_tokens}, quantized[b], repeats)
            for b in precisions]
    rows.append(_step_row({"kind": "base_fp32", "bits": 32, "tokens": new_tokens}, base_steps, repeats))
    base_tps = rows[-1]["tokens_per_s"]
    for row in rows:
        row["speedup_vs_base"] = row["tokens_per_s"] / base_tps
    return rows


def run_decode(args: argparse.Namespace) -> int:
    """End-to-end greedy decode tokens/s per bit-width and for the unquantized model
    (`--engine native`: the native engine's steps, see anyprec.bench_engine)."""
    import torch

    if args.engine == "native" or args.vs:
        from anyprec.bench_engine import run_engine_decode

        if args.engine != "native":
            raise SystemExit("error: --vs llamacpp compares the native engine; add --engine native")
        result = run_engine_decode(args)
        _write_json(args.json, {"dir": str(args.dir), "threads": torch.get_num_threads(), **result})
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    from anyprec.packed import read_manifest

    manifest = read_manifest(args.dir)
    rows = measure_decode(args.dir, manifest["inputs"]["base_model_ref"], args.bits, args.tokens, args.repeats,
                          args.prompt)
    print(f"median decode step over {args.repeats} rounds of {args.tokens} tokens per model "
          "(bit-widths rotated within one generate call); 10th-90th percentile step in brackets")
    print(f"{'model':<10}{'bits':>5}{'tok/s':>9}{'ms/tok':>9}{'[p10, p90]':>18}{'x_base':>8}")
    for r in rows:
        spread = f"[{r['ms_per_token_p10']:.1f}, {r['ms_per_token_p90']:.1f}]"
        print(f"{r['kind']:<10}{r['bits']:>5}{r['tokens_per_s']:>9.1f}{r['ms_per_token']:>9.2f}{spread:>18}"
              f"{r['speedup_vs_base']:>8.2f}")
    _write_json(args.json, {"dir": str(args.dir), "threads": torch.get_num_threads(), "prompt": args.prompt, "rows": rows})
    return 0


def _add_gemv(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gemv", help="bitplane-LUT mat-vec vs torch dense, per bit-width")
    p.add_argument("--shape", type=parse_shape, default=DEFAULTS.gemv_shape, help="OUTxIN (default %(default)s)")
    p.add_argument("--bits", type=int, nargs="+", default=list(DEFAULT_BITS), choices=range(1, 9))
    p.add_argument("--json", help="write the rows to this JSON file")
    p.add_argument("--threads", type=int, default=DEFAULTS.threads or 0, help="torch/OpenMP threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=DEFAULTS.repeats, help="timed calls per figure (median)")
    p.add_argument("--rotate-mib", type=int, default=DEFAULTS.rotate_mib, help="weight copies total (exceed the LLC)")
    p.add_argument("--bandwidth-mib", type=int, default=DEFAULTS.bandwidth_mib,
                   help="buffer for the read-bandwidth pass")
    p.add_argument("--backend", choices=["reference", "cpu", "triton"], default=None)
    p.set_defaults(func=run_gemv)


def _add_decode(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("decode", help="end-to-end generate tokens/s per bit-width vs the base model")
    p.add_argument("dir", help="packed artifact directory")
    p.add_argument("--bits", nargs="+", default=list(DEFAULT_BITS),
                   help="bit-widths; 4.5 times a precision plan (stored or computed), and so do, with the "
                        "transformers engine, a stored plan's name or a plan JSON file")
    p.add_argument("--tokens", type=int, default=DEFAULTS.decode_tokens, help="new tokens per generate call")
    p.add_argument("--json", help="write the rows to this JSON file")
    p.add_argument("--threads", type=int, default=DEFAULTS.threads or 0)
    p.add_argument("--repeats", type=int, default=DEFAULTS.decode_repeats, help="interleaved rounds (median)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--engine", choices=["transformers", "native"], default="transformers",
                   help="transformers: generate() vs the fp32 base model; native: the native engine's steps")
    p.add_argument("--with-transformers", action="store_true",
                   help="with --engine native: also time the transformers engine, interleaved")
    p.add_argument("--prompt-tokens", type=int, default=16, help="with --engine native: prompt length")
    p.add_argument("--vs", choices=["llamacpp"], help="also run llama.cpp on the same base model (needs .[compare])")
    p.add_argument("--llamacpp-types", nargs="+", default=["Q4_0", "Q4_K_M", "Q6_K", "Q8_0"],
                   choices=["Q3_K_M", "Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"])
    p.add_argument("--prefill-tokens", type=int, default=128, help="prompt length of the --vs prompt figures")
    p.add_argument("--gguf-dir", help="where the llama.cpp GGUFs are made (default: the anyprec cache)")
    from anyprec.bench_engine import add_head_option

    add_head_option(p)
    p.set_defaults(func=run_decode)


def add_bench_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `bench gemv|decode` to a CLI's subparsers; the chosen handler is args.func(args)."""
    bench = subparsers.add_parser("bench", help="kernel (gemv), end-to-end (decode, prefill, batch) speed")
    sub = bench.add_subparsers(dest="bench_command", required=True)
    _add_gemv(sub)
    _add_decode(sub)
    from anyprec.bench_engine import add_engine_benches
    from anyprec.serving.cli import add_serving_benches  # bench serve | route: the server's load test

    add_engine_benches(sub)
    add_serving_benches(sub)
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
