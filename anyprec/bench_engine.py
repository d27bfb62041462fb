"""Engine speed figures: decode steps per bit-width, mixed-precision batches, prefill.

Every figure is a median over individually timed calls, with the 10th-90th percentile,
and competing configurations are interleaved (A B A B) so the slow phases of a shared
machine fall on all of them alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from anyprec.bench import step_spread as _spread
from anyprec.engine import DecodeEngine


def rotating_engine_steps(engine: DecodeEngine, bits: Sequence[int], prompt_ids: Sequence[int],
                          tokens_per_bits: int, block: int = 4) -> dict[int, list[float]]:
    """Seconds of single-sequence decode steps per bit-width, from one sequence whose
    precision switches every `block` steps (the first step of each block is dropped: it
    starts with the previous bit-width's planes in cache). Greedy tokens."""
    block = max(2, min(block, tokens_per_bits))
    schedule = [b for _ in range(-(-tokens_per_bits // block)) for b in bits for _ in range(block)]
    slot, logits = engine.add(prompt_ids, schedule[0])
    steps: dict[int, list[float]] = {b: [] for b in bits}
    try:
        token = int(torch.argmax(logits))
        for i, b in enumerate(schedule):
            if engine.length(slot) >= engine.context_length:
                break
            start = time.perf_counter()
            logits = engine.step([slot], [token], [b])
            seconds = time.perf_counter() - start
            token = int(torch.argmax(logits[0]))
            if i > 0 and schedule[i - 1] == b:
                steps[b].append(seconds)
    finally:
        engine.release(slot)
    return steps


# "cpu": this process's CPU time, which other jobs on a busy machine barely change; it sums
# every thread's time (OpenMP spinning included), so compare paths with it at --threads 1
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def batch_steps(engine: DecodeEngine, bits: Sequence[int], prompt_ids: Sequence[int], steps: int,
                clock: str = "wall") -> list[float]:
    """Seconds of each decode step of len(bits) sequences at once (sequence i at bits[i])."""
    slots = []
    try:
        tokens = []
        for b in bits:
            slot, logits = engine.add(prompt_ids, b)
            slots.append(slot)
            tokens.append(int(torch.argmax(logits)))
        times = []
        for _ in range(steps):
            start = CLOCKS[clock]()
            logits = engine.step(slots, tokens, list(bits))
            times.append(CLOCKS[clock]() - start)
            tokens = logits.argmax(dim=-1).tolist()
        return times[1:]  # the first step allocates the batch's caches
    finally:
        for slot in slots:
            engine.release(slot)


def prefill_seconds(engine: DecodeEngine, prompt_ids: Sequence[int], bits: int, clock: str = "wall") -> float:
    """Seconds of one `add` (prefill) of `prompt_ids`."""
    start = CLOCKS[clock]()
    slot, _ = engine.add(prompt_ids, bits)
    seconds = CLOCKS[clock]() - start
    engine.release(slot)
    return seconds


def interleave(runs: dict[str, Callable[[], None]], rounds: int) -> None:
    """Run every callable once per round, in alternating order (A B, B A, ...)."""
    names = list(runs)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            runs[name]()


def measure_engine_decode(engines: dict[str, DecodeEngine], bits: Sequence[int], prompt_ids: Sequence[int],
                          tokens: int, rounds: int,
                          others: dict[str, Callable[[], list[float]]] | None = None) -> list[dict]:
    """Rows {engine, bits, tokens_per_s, ms_per_token, ...} per engine and bit-width; `others`
    (name -> a run returning its step seconds, e.g. llama.cpp) join the interleaved rounds
    as rows with bits 0."""
    others = others or {}
    steps = {(name, b): [] for name in engines for b in bits}
    steps.update({(name, 0): [] for name in others})

    def run(name: str) -> Callable[[], None]:
        def go() -> None:
            for b, t in rotating_engine_steps(engines[name], bits, prompt_ids, tokens).items():
                steps[(name, b)].extend(t)
        return go

    for name, engine in engines.items():  # warm-up: first-call allocations
        rotating_engine_steps(engine, bits, prompt_ids, 2, block=2)
    runs = {name: run(name) for name in engines}
    runs.update({name: (lambda name=name: steps[(name, 0)].extend(other())) for name, other in others.items()})
    interleave(runs, rounds)
    rows = []
    for (name, b), times in steps.items():
        s = _spread(times)
        rows.append({"engine": name, "bits": b, "tokens_per_s": 1e3 / s["ms"], "ms_per_token": s["ms"],
                     "ms_per_token_p10": s["ms_p10"], "ms_per_token_p90": s["ms_p90"], "steps_timed": s["timed"]})
    return rows


def measure_batch(engine: DecodeEngine, batch_bits: Sequence[int], prompt_ids: Sequence[int], steps: int,
                  rounds: int, clock: str = "wall") -> dict:
    """Total tok/s of a mixed-precision batch against single sequences at the same bit-widths
    (interleaved rounds); `ratio` = batch total tok/s / mean single-sequence tok/s."""
    batch: list[float] = []
    single: dict[int, list[float]] = {b: [] for b in sorted(set(batch_bits))}
    interleave({
        "batch": lambda: batch.extend(batch_steps(engine, batch_bits, prompt_ids, steps, clock)),
        "single": lambda: [single[b].extend(batch_steps(engine, [b], prompt_ids, steps, clock)) for b in single],
    }, rounds)
    b_row = _spread(batch)
    single_tps = {b: 1e3 / _spread(t)["ms"] for b, t in single.items()}
    mean_single = statistics.mean(single_tps[b] for b in batch_bits)
    total = len(batch_bits) * 1e3 / b_row["ms"]
    return {"batch_bits": list(batch_bits), "ms_per_step": b_row["ms"], "ms_per_step_p10": b_row["ms_p10"],
            "ms_per_step_p90": b_row["ms_p90"], "total_tokens_per_s": total, "single_tokens_per_s": single_tps,
            "mean_single_tokens_per_s": mean_single, "ratio": total / mean_single}


def measure_prefill(engines: dict[str, DecodeEngine], bits: Sequence[int], prompt_ids: Sequence[int],
                    rounds: int, clock: str = "wall") -> list[dict]:
    """Prompt tok/s of `add` per engine and bit-width (interleaved rounds, medians)."""
    times = {(name, b): [] for name in engines for b in bits}

    def run(name: str) -> Callable[[], None]:
        return lambda: [times[(name, b)].append(prefill_seconds(engines[name], prompt_ids, b, clock)) for b in bits]

    for name in engines:
        prefill_seconds(engines[name], prompt_ids[:8], bits[0])  # warm-up
    interleave({name: run(name) for name in engines}, rounds)
    rows = []
    for (name, b), t in times.items():
        s = _spread(t)
        rows.append({"engine": name, "bits": b, "prompt_tokens": len(prompt_ids), "ms": s["ms"],
                     "ms_p10": s["ms_p10"], "ms_p90": s["ms_p90"], "tokens_per_s": len(prompt_ids) * 1e3 / s["ms"]})
    return rows


def step_breakdown(engine, bits: int, prompt_ids: Sequence[int], steps: int) -> dict[str, float]:
    """Milliseconds per part of one native decode step at `bits` (mean over `steps` steps;
    the prefill is not profiled)."""
    return batch_breakdown(engine, [bits], prompt_ids, steps)


def batch_breakdown(engine, batch_bits: Sequence[int], prompt_ids: Sequence[int], steps: int) -> dict[str, float]:
    """Milliseconds per part of one native decode step of len(batch_bits) sequences (sequence
    i at batch_bits[i]; mean over `steps` steps after one untimed step that sizes the caches;
    the prefills are not profiled). `python_and_other` is the step's wall time minus the C parts."""
    slots, tokens = [], []
    try:
        for b in batch_bits:
            slot, logits = engine.add(prompt_ids, b)
            slots.append(slot)
            tokens.append(int(torch.argmax(logits)))
        tokens = engine.step(slots, tokens, list(batch_bits)).argmax(dim=-1).tolist()

        def one_step() -> float:
            nonlocal tokens
            start = time.perf_counter()
            tokens = engine.step(slots, tokens, list(batch_bits)).argmax(dim=-1).tolist()
            return time.perf_counter() - start

        return _profiled_parts(engine, one_step, steps, "step")
    finally:
        for slot in slots:
            engine.release(slot)


def prefill_breakdown(engine, bits: int, prompt_ids: Sequence[int], repeats: int) -> dict[str, float]:
    """Milliseconds per part of one native prefill of `prompt_ids` at `bits` (mean over
    `repeats` prefills): the engine's per-part timers (wall time of each part, all threads),
    `python_and_other` (the rest of `add`: row packing, cache allocation) and `prefill`."""
    return _profiled_parts(engine, lambda: prefill_seconds(engine, prompt_ids, bits), repeats, "prefill")


def _profiled_parts(engine, run: Callable[[], float], n: int, total: str) -> dict[str, float]:
    """Mean milliseconds per part (the engine's timers) of n calls of `run` (which returns its
    wall seconds), plus `python_and_other` (wall time outside the C parts) and `total`."""
    from anyprec.engine.native import PARTS

    engine.timings.zero_()
    engine.profile = True
    try:
        wall = sum(run() for _ in range(n))
    finally:
        engine.profile = False
    parts = {name: float(t) * 1e3 / n for name, t in zip(PARTS, engine.timings)}
    parts["python_and_other"] = wall * 1e3 / n - sum(parts.values())
    parts[total] = wall * 1e3 / n
    return parts


# -- CLI ---------------------------------------------------------------------------------

PROMPT_TEXT = ("The history of the city begins with a small settlement on the river, where traders "
               "met to exchange grain, salt and cloth. ")


def prompt_ids(tokenizer, n_tokens: int) -> list[int]:
    """The first `n_tokens` ids of PROMPT_TEXT repeated (a real text, any length)."""
    ids: list[int] = []
    while len(ids) < n_tokens:
        ids += tokenizer(PROMPT_TEXT).input_ids
    return ids[:n_tokens]


def engine_precisions(values: Sequence[str | int | float], artifact_dir) -> list[int | float]:
    """--bits of an engine bench as the engines take them: integer widths and averages such as
    4.5 (each engine resolves an average to the artifact's stored plan or computes one)."""
    from anyprec.errors import UsageError
    from anyprec.precision import check_precisions

    parsed = check_precisions(values, artifact_dir)  # a bad value fails before loading
    names = [p for p in parsed if isinstance(p, str)]
    if names:
        raise UsageError(f"--bits {' '.join(names)}: the engine benches take bit-widths and averages (e.g. 4.5); "
                         "time a named plan or a plan file with `anyprec bench decode DIR --engine transformers`")
    return parsed


def _load(args, kinds: Sequence[str]):
    """(apm, {kind: engine}) for the artifact in args.dir, threads set."""
    from anyprec.engine import open_engine
    from anyprec.precision import loadable_bits
    from anyprec.runtime import load_anyprec

    if args.threads:
        torch.set_num_threads(args.threads)
    args.bits = engine_precisions(args.bits, args.dir)
    luts = "fp16" if args.head == "fp16" else "u8"  # an fp16 head exists only in an fp16 load
    apm = load_anyprec(args.dir, loadable_bits(args.bits), luts=luts)
    acts = {k: args.acts if k == "native" else "fp32" for k in kinds}  # int8 activations: native only
    engines = {k: open_engine(apm, kind=k, max_batch=16, head=args.head, acts=acts[k]) for k in kinds}
    if getattr(args, "tile_rows", 0) and "native" in engines:
        engines["native"].tile_rows = args.tile_rows
    if getattr(args, "tiles", None) and "native" in engines:
        engines["native"].tiles = args.tiles[0]
    return apm, engines


def _more_tile_kinds(args, apm, engines: dict) -> None:
    """One more native engine, named native:KIND, per tile kind after the first of --tiles."""
    from anyprec.engine import open_engine

    for kind in args.tiles[1:] if "native" in engines else []:
        engine = open_engine(apm, kind="native", max_batch=16, head=args.head, acts=args.acts)
        engine.tile_rows, engine.tiles = args.tile_rows, kind
        engines[f"native:{kind}"] = engine


def add_tile_rows_option(p) -> None:
    """--tile-rows: the native engine's tile GEMM threshold (compare paths in one window);
    --clock cpu: time by this process's CPU time (a busy machine's other jobs barely count)."""
    p.add_argument("--tile-rows", type=int, default=0,
                   help="rows at one bit-width from which native layers use the tile GEMM (0: the built-in "
                        "threshold; a huge value: mat-vec kernels only)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall time, or this process's CPU time (sums all threads: use it with --threads 1)")
    from anyprec.engine.native import DEFAULT_TILES, TILE_KINDS

    p.add_argument("--tiles", nargs="+", choices=TILE_KINDS, default=[DEFAULT_TILES],
                   help="the native engine's tile GEMM: int16 (uint8 LUTs on AVX2) or fp32; bench prefill "
                        "times each kind given, interleaved")


def _print_rows(title: str, rows: list[dict], unit: str) -> None:
    print(title)
    print(f"{'engine':<14}{'bits':>5}{unit:>10}{'ms':>10}{'[p10, p90]':>20}")
    for r in rows:
        ms, lo, hi = (r["ms_per_token"], r["ms_per_token_p10"], r["ms_per_token_p90"]) if "ms_per_token" in r \
            else (r["ms"], r["ms_p10"], r["ms_p90"])
        print(f"{r['engine']:<14}{r['bits']:>5}{r['tokens_per_s']:>10.1f}{ms:>10.2f}{f'[{lo:.2f}, {hi:.2f}]':>20}")


def run_engine_decode(args) -> dict:
    """`bench decode --engine native`: per bit-width decode steps of the native engine (and the
    transformers engine with --with-transformers, llama.cpp with --vs llamacpp), plus a
    per-part breakdown of one step."""
    if args.vs == "llamacpp":  # before minutes of loading, say what is missing
        from anyprec.bench_llamacpp import require_llama_cpp

        try:
            require_llama_cpp()
        except RuntimeError as err:
            raise SystemExit(f"error: {err}") from None
    kinds = ["native"] + (["transformers"] if args.with_transformers else [])
    apm, engines = _load(args, kinds)
    ids = prompt_ids(apm.tokenizer, args.prompt_tokens)
    peers = _llamacpp_runners(args, apm) if args.vs == "llamacpp" else {}
    others = {f"llamacpp:{q}": (lambda r=r: r.decode_steps(ids, args.tokens)) for q, r in peers.items()}
    rows = measure_engine_decode(engines, args.bits, ids, args.tokens, args.repeats, others)
    _print_rows(f"median decode step, batch 1, {args.repeats} rounds x {args.tokens} steps per bit-width "
                "(bit-widths rotated every 4 steps)", rows, "tok/s")
    breakdown = {b: step_breakdown(engines["native"], b, ids, args.tokens) for b in (min(args.bits), max(args.bits))}
    for b, parts in breakdown.items():
        print(f"one native step at {b} bits (ms): " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))
    result = {"rows": rows, "breakdown_ms": breakdown, "prompt_tokens": len(ids), "acts": args.acts}
    if peers:
        result.update(_llamacpp_summary(args, apm, engines["native"], ids, rows, peers))
    for runner in peers.values():
        runner.close()
    return result


def _llamacpp_runners(args, apm) -> dict:
    from anyprec.bench_llamacpp import LlamaCppProcess, make_ggufs
    from anyprec.env import cache_dir
    from anyprec.models import find_embedded_gguf

    folder = Path(args.gguf_dir) if args.gguf_dir else cache_dir() / "llamacpp"
    paths = make_ggufs(find_embedded_gguf(), folder, args.llamacpp_types)
    return {q: LlamaCppProcess(p, torch.get_num_threads()) for q, p in paths.items()}


def _llamacpp_summary(args, apm, native, ids, rows, peers) -> dict:
    """Prompt tok/s of both (interleaved), bits per weight, and our/their decode ratios."""
    from anyprec.bench_llamacpp import bits_per_weight, ratio_rows

    long_ids = prompt_ids(apm.tokenizer, args.prefill_tokens)
    prefill = {(n, b): [] for n in ["native"] for b in args.bits}
    prefill.update({(f"llamacpp:{q}", 0): [] for q in peers})
    runs = {"native": lambda: [prefill[("native", b)].append(prefill_seconds(native, long_ids, b)) for b in args.bits]}
    runs.update({f"llamacpp:{q}": (lambda q=q, r=r: prefill[(f"llamacpp:{q}", 0)].append(r.prefill_seconds(long_ids)))
                 for q, r in peers.items()})
    interleave(runs, args.repeats)
    prompt_rows = [{"engine": n, "bits": b, "prompt_tokens": len(long_ids),
                    "tokens_per_s": len(long_ids) * 1e3 / _spread(t)["ms"]} for (n, b), t in prefill.items()]
    # the quantized weights are planes (buffers), so count them from the manifest's shapes
    n_params = sum(p.numel() for p in apm.model.parameters()) + sum(
        m["out_features"] * m["in_features"] for m in apm.manifest["modules"].values())
    peer_rows = {q: next(r for r in rows if r["engine"] == f"llamacpp:{q}") for q in peers}
    for q, r in peer_rows.items():
        r["bits_per_weight"] = bits_per_weight(peers[q].path, n_params)
    ratios = ratio_rows([r for r in rows if r["engine"] == "native"], peer_rows)
    print("prompt tok/s: " + ", ".join(f"{r['engine']}{'@' + str(r['bits']) if r['bits'] else ''} "
                                       f"{r['tokens_per_s']:.0f}" for r in prompt_rows))
    print("decode ratio ours/llama.cpp: " + ", ".join(f"{r['bits']} bits vs {r['peer']} {r['ratio']:.2f}x"
                                                     for r in ratios))
    return {"prompt_rows": prompt_rows, "llamacpp_ratios": ratios}


def run_prefill(args) -> int:
    """`bench prefill`: prompt tok/s of the native and transformers engines."""
    from anyprec.bench import _write_json

    apm, engines = _load(args, args.engines)
    _more_tile_kinds(args, apm, engines)
    ids = prompt_ids(apm.tokenizer, args.prompt_tokens)
    rows = measure_prefill(engines, args.bits, ids, args.repeats, args.clock)
    _print_rows(f"median prefill of a {len(ids)}-token prompt over {args.repeats} interleaved rounds", rows,
                "tok/s")
    breakdown = {}
    if args.breakdown and "native" in engines:
        breakdown = {b: prefill_breakdown(engines["native"], b, ids, args.repeats) for b in args.bits}
        for b, parts in breakdown.items():
            print(f"one native prefill at {b} bits (ms): " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))
    _write_json(args.json, {"dir": str(args.dir), "threads": torch.get_num_threads(), "tile_rows": args.tile_rows,
                            "tiles": args.tiles, "clock": args.clock, "rows": rows,
                            "breakdown_ms": {str(b): p for b, p in breakdown.items()}})
    return 0


def run_batch(args) -> int:
    """`bench batch`: total tok/s of a mixed-precision batch vs single sequences."""
    from anyprec.bench import _write_json
    from anyprec.errors import UsageError

    if args.breakdown and args.engine != "native":
        raise UsageError("--breakdown times the native engine's parts: use it with --engine native")
    args.bits = args.batch_bits
    apm, engines = _load(args, [args.engine])
    args.batch_bits = args.bits
    ids = prompt_ids(apm.tokenizer, args.prompt_tokens)
    result = measure_batch(engines[args.engine], args.batch_bits, ids, args.steps, args.repeats, args.clock)
    print(f"batch of {len(args.batch_bits)} at bits {args.batch_bits}: {result['total_tokens_per_s']:.1f} tok/s "
          f"total ({result['ms_per_step']:.2f} ms/step, p10-p90 {result['ms_per_step_p10']:.2f}-"
          f"{result['ms_per_step_p90']:.2f}); one sequence {result['mean_single_tokens_per_s']:.1f} tok/s "
          f"(mean over the batch's bit-widths); ratio {result['ratio']:.2f}x")
    if args.breakdown:
        result["breakdown_ms"] = _batch_breakdowns(engines[args.engine], args.batch_bits, ids, args.steps)
    _write_json(args.json, {"dir": str(args.dir), "threads": torch.get_num_threads(), "engine": args.engine,
                            "tile_rows": args.tile_rows, "clock": args.clock, **result})
    return 0


def run_head(args) -> int:
    """`bench head`: perplexity on the held-out corpora with each output head mode, plus the
    head's ms per decode token (T=1) per mode, to pick the engine's default head."""
    from anyprec.bench import _write_json
    from anyprec.calibration import heldout_split
    from anyprec.engine.head import HEAD_MODES, head_logits, head_perplexity, quantize_head_int8
    from anyprec.packed import read_manifest
    from anyprec.perplexity import heldout_streams
    from anyprec.runtime import load_anyprec

    if args.threads:
        torch.set_num_threads(args.threads)
    frac, seed = heldout_split(read_manifest(args.dir)["inputs"])
    apm = load_anyprec(args.dir, sorted(set(args.bits)), luts="fp16")  # the exact head, against int8
    streams = heldout_streams(apm.tokenizer, args.corpora, frac, seed, args.max_tokens)
    rows = []
    for b in args.bits:
        for corpus, ids in streams.items():
            ppl = head_perplexity(apm, b, ids, args.window)
            rows.append({"bits": b, "corpus": corpus, "tokens": int(ids.numel()), **{f"ppl_{m}": v for m, v in ppl.items()}})
            print(f"{b} bits {corpus} ({ids.numel()} tokens): " + ", ".join(f"{m} {v:.4f}" for m, v in ppl.items()))
    weight = apm.model.lm_head.weight_f16
    q, scale = quantize_head_int8(weight)
    x = torch.randn(1, weight.shape[1])
    times = {m: [] for m in HEAD_MODES}
    interleave({m: (lambda m=m: times[m].append(_timed(lambda: head_logits(x, m, weight, q, scale)))) for m in HEAD_MODES},
               args.repeats)
    head_ms = {m: _spread(t)["ms"] for m, t in times.items()}
    print("head ms per decode token: " + ", ".join(f"{m} {v:.2f}" for m, v in head_ms.items()))
    _write_json(args.json, {"dir": str(args.dir), "threads": torch.get_num_threads(), "rows": rows,
                            "head_ms": head_ms})
    return 0


def _batch_breakdowns(engine, batch_bits: Sequence[int], ids: Sequence[int], steps: int) -> dict:
    """Per-part ms of one step of the whole batch and of one sequence at each of its widths,
    printed as a table (ms per step; the single rows are one sequence's step)."""
    runs = {"batch": list(batch_bits), **{f"single {b}": [b] for b in sorted(set(batch_bits))}}
    out = {name: batch_breakdown(engine, bits, ids, steps) for name, bits in runs.items()}
    parts = list(next(iter(out.values())))
    print("ms per step: " + " | ".join(parts))
    for name, row in out.items():
        print(f"{name}: " + " | ".join(f"{row[p]:.2f}" for p in parts))
    return out


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def add_head_option(p) -> None:
    """--head: the native engine's output head (anyprec.engine.head); --acts: its activations
    on uint8 LUTs (anyprec.engine.native.ACT_MODES)."""
    from anyprec.engine.head import DEFAULT_HEAD, HEAD_MODES
    from anyprec.engine.native import ACT_MODES, DEFAULT_ACTS

    p.add_argument("--acts", choices=ACT_MODES, default=DEFAULT_ACTS,
                   help="native engine activations of the 4..8-bit mat-vec calls: fp32, or int8 per 32 columns "
                        "(faster kernel, perplexity within about +-0.7%%; opt-in)")
    p.add_argument("--head", choices=HEAD_MODES, default=DEFAULT_HEAD,
                   help="native engine output head: fp16 (exact), int8 (int8 weights and activations), "
                        "int8w (int8 weights, fp32 activations)")


def add_engine_benches(sub) -> None:
    """Add `bench prefill`, `bench batch` and `bench head` to the bench subparsers."""
    from anyprec.bench import DEFAULT_BITS

    p = _subparser(sub, "prefill", "prompt tok/s: native engine vs transformers", "write the rows to this JSON file")
    p.add_argument("--bits", nargs="+", default=[3, 4, 8], help="bit-widths and averages such as 4.5 (a plan)")
    p.add_argument("--engines", nargs="+", default=["native", "transformers"], choices=["native", "transformers"])
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds (median)")
    p.add_argument("--breakdown", action="store_true",
                   help="also print the native engine's milliseconds per part of one prefill (mean of --repeats)")
    add_head_option(p)
    add_tile_rows_option(p)
    p.set_defaults(func=run_prefill)
    p = _subparser(sub, "batch", "total tok/s of a mixed-precision batch vs one sequence",
                   "write the result to this JSON file")
    p.add_argument("--batch-bits", nargs="+", default=[*DEFAULT_BITS, 3, 4],
                   help="one precision per sequence, a bit-width or an average such as 4.5 (default: 8 "
                        "sequences, 3..8 bits plus 3 and 4)")
    p.add_argument("--engine", choices=["native", "transformers"], default="native")
    p.add_argument("--steps", type=int, default=16, help="decode steps per round")
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (median)")
    p.add_argument("--breakdown", action="store_true",
                   help="also print ms per part of one step (native engine) for the batch and one sequence per width")
    add_head_option(p)
    add_tile_rows_option(p)
    p.set_defaults(func=run_batch)
    p = _subparser(sub, "head", "perplexity and speed of the engine's output head modes (fp16, int8w, int8)",
                   "write the rows to this JSON file")
    p.add_argument("--bits", type=int, nargs="+", default=[3, 4, 8], choices=range(1, 9))
    p.add_argument("--corpora", nargs="+", default=["wiki", "news"], choices=["wiki", "news"])
    p.add_argument("--max-tokens", type=int, default=4096, help="first N held-out tokens per corpus")
    p.add_argument("--window", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=20, help="timed head calls per mode (interleaved)")
    p.set_defaults(func=run_head)


def _subparser(sub, name: str, help_text: str, json_help: str):
    """A bench subcommand with the arguments every engine bench takes: DIR, --threads, --json."""
    p = sub.add_parser(name, help=help_text)
    p.add_argument("dir", help="packed artifact directory")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", help=json_help)
    return p
