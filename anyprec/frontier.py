"""Perplexity against bytes in memory, side by side: `anyprec frontier DIR --out FOLDER`.

Rows (`--rows`, default every one that is available): the base model; our integer
bit-widths; precision plans every `step` bits between them (anyprec.plans); a dedicated (not
nested) quantization per width and the paper's reference nested algorithm
(anyprec.evaluation.baselines, from the Fisher in the artifact's quantization work dir, cached
where `anyprec eval` caches them); and llama.cpp's own quantizations of the same base when
llama-cpp-python is installed (their GGUF file size as bytes). Every row is scored by the
same code (anyprec.perplexity) on the same held-out token streams, tokenized once. Our bytes
are `anyprec info`'s (anyprec.precision.memory_bytes); a baseline's b-bit model is held in
the same planes + LUT layout, so it weighs what our b-bit load does.
Writes FOLDER/frontier.json, frontier.md (a table) and frontier.png (one panel per corpus).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Callable

import torch

from anyprec.errors import UsageError

FORMAT = "anyprec-frontier"
FILES = ("frontier.json", "frontier.md", "frontier.png")
LLAMACPP_TYPES = ("Q3_K_S", "Q3_K_M", "Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")
ROWS = ("base", "ours", "plans", "dedicated", "reference", "llamacpp")
BASELINES = ("dedicated", "reference")  # quantized in process from the work dir's Fisher

Scorer = Callable[[torch.nn.Module, str], dict[str, float]]


def plan_targets(seed: int, parent: int, step: float) -> list[float]:
    """The non-integer averages k * step strictly between seed and parent bits."""
    if not 0 < step < 1:
        raise ValueError(f"--step {step}: give a fraction of a bit in (0, 1), e.g. 0.25")
    count = math.floor((parent - seed) / step + 1e-9)
    targets = [round(seed + k * step, 6) for k in range(1, count)]
    return [t for t in targets if abs(t - round(t)) > 1e-9]


def _row(kind: str, name: str, nbytes: int, ppl: dict[str, float], avg_bits: float | None = None) -> dict[str, Any]:
    return {"kind": kind, "name": name, "bytes": int(nbytes), "avg_bits": avg_bits, "ppl": ppl}


def our_rows(apm: Any, info: Callable[[Any], dict], score: Scorer, step: float, objectives: dict | None,
             widths: bool = True) -> list[dict]:
    """Integer widths (when `widths`) and, given the objective table, the optimal plan at every
    `plan_targets` average. Bytes: `info(precision)` is `anyprec info`'s count
    (anyprec.precision.memory_bytes); a plan weighs its codes + LUTs at each module's width
    plus the dense tensors, which is what `anyprec info --bits <plan>` reports for it."""
    from anyprec.plans import plan_for

    rows = []
    for b in apm.bits_available if widths else ():
        with apm.precision(b):
            rows.append(_row("anyprec", f"{b}-bit", info(b)["total"], score(apm.model, f"{b}-bit"), float(b)))
    if objectives is not None:
        available = apm.bits_available
        dense = info(available[0])["dense"]
        for target in plan_targets(available[0], available[-1], step):
            plan = plan_for(apm.manifest, objectives, available, avg_bits=target)
            with apm.precision(plan):
                ppl = score(apm.model, f"plan {target}")
            rows.append(_row("anyprec plan", f"plan {target:g}", plan.quantized_bytes + dense, ppl, plan.avg_bits))
    return rows


def baseline_rows(model: torch.nn.Module, manifest: dict, work: Path, methods: list[str], widths: list[int],
                  info: Callable[[Any], dict], score: Scorer, progress: bool) -> list[dict]:
    """One row per (method, width) for `methods` of anyprec.evaluation.baselines (dedicated,
    reference), quantized from the Fisher in `work` and cached in work/baselines exactly as
    `anyprec eval` caches them (the same key), scored on `model` with its weights swapped in.
    Bytes: our b-bit load's (`info(b)`): the same planes + LUT layout holds a baseline's codes."""
    from anyprec.eval_cli import load_fisher
    from anyprec.evaluation.baselines import quantize_method, quantized_weights

    fisher, sens_key = load_fisher(manifest, work, progress)
    key = f"{sens_key}|{manifest['seed_bits']}|{manifest['parent_bits']}"
    rows = []
    for method in methods:
        result = quantize_method(model, fisher, method, widths, manifest["seed_bits"], manifest["parent_bits"],
                                 progress=progress, cache=work / "baselines", cache_key=key)
        for b in widths:
            with quantized_weights(model, result.codes[b]):
                rows.append(_row(method, f"{method} {b}-bit", info(b)["total"], score(model, f"{method} {b}"),
                                 float(b)))
        del result
    return rows


def baseline_work_dir(manifest: dict, work_dir: Path | None) -> Path | None:
    """The quantization work dir holding the artifact's Fisher (--work-dir, else the folder
    `anyprec quantize` used by default), or None when it holds no sensitivity."""
    from anyprec.eval_cli import _work_dir
    from anyprec.quantize import SENS_META

    work = Path(work_dir) if work_dir is not None else _work_dir(manifest["inputs"])
    return work if (work / "sensitivity" / SENS_META).is_file() else None


def parse_rows(value: str | None) -> list[str] | None:
    """--rows "ours,plans,dedicated" -> the list (None: every row that is available)."""
    if value is None:
        return None
    rows = [r.strip() for r in value.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown or not rows:
        raise UsageError(f"--rows {value!r}: unknown {', '.join(unknown) or '(empty)'}; give a comma-separated "
                         f"list of {', '.join(ROWS)}")
    return rows


def load_gguf_model(path: Path, base_dir: Path) -> torch.nn.Module:
    """A GGUF dequantized by transformers' loader into the base model's own config: the GGUF
    config reader loses settings such as rope_theta (100000 -> 10000 on SmolLM2), which alone
    would add ~15% perplexity and measure the reader, not the quantization."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from anyprec.models import _gguf_kwargs

    config = AutoConfig.from_pretrained(base_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(Path(path).parent, gguf_file=Path(path).name, config=config,
                                                 dtype=torch.float32, **_gguf_kwargs())
    return model.eval()


def llamacpp_rows(base_ref: str, score: Scorer, folder: Path, types: tuple[str, ...]) -> tuple[list[dict], str | None]:
    """(rows, None), or ([], why they were skipped): llama-cpp-python missing, or a base model
    without a GGUF to requantize (only the embedded default ships one)."""
    from anyprec.models import DEFAULT_ALIASES, find_embedded_gguf, resolve_model_dir

    try:
        import llama_cpp  # noqa: F401  (only probing that the optional extra is installed)
    except ImportError:
        return [], "llama-cpp-python is not installed (pip install -e .[compare]); llama.cpp rows skipped"
    if base_ref not in DEFAULT_ALIASES:
        return [], f"llama.cpp rows need a GGUF of the base model; only the embedded default has one ({base_ref})"
    from anyprec.bench_llamacpp import make_ggufs

    base_dir = resolve_model_dir(base_ref)
    rows = []
    for quant, path in make_ggufs(find_embedded_gguf(), folder, types).items():
        model = load_gguf_model(path, base_dir)
        rows.append(_row("llama.cpp", quant, path.stat().st_size, score(model, quant)))
        del model
    return rows, None


def markdown_table(report: dict[str, Any]) -> str:
    """Rows sorted by bytes: | kind | name | MB | avg bits | ppl per corpus |."""
    corpora = report["corpora"]
    lines = ["| kind | name | MB | avg bits | " + " | ".join(corpora) + " |",
             "|---|---|---:|---:|" + "---:|" * len(corpora)]
    for row in sorted(report["rows"], key=lambda r: r["bytes"]):
        bits = "" if row["avg_bits"] is None else f"{row['avg_bits']:.2f}"
        ppl = " | ".join(f"{row['ppl'][c]:.3f}" for c in corpora)
        lines.append(f"| {row['kind']} | {row['name']} | {row['bytes'] / 1e6:.1f} | {bits} | {ppl} |")
    notes = [f"\n{n}" for n in report["notes"]]
    return "\n".join(lines) + "\n" + "".join(notes) + ("\n" if notes else "")


def plot(report: dict[str, Any], path: Path) -> None:
    """One panel per corpus: perplexity against MB, a line per kind (base as a dashed level)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corpora = report["corpora"]
    fig, axes = plt.subplots(1, len(corpora), figsize=(6 * len(corpora), 4.5), squeeze=False)
    styles = {"anyprec": "o-", "anyprec plan": ".-", "dedicated": "^:", "reference": "v:", "llama.cpp": "s--"}
    for ax, corpus in zip(axes[0], corpora):
        for kind, style in styles.items():
            rows = sorted((r for r in report["rows"] if r["kind"] == kind), key=lambda r: r["bytes"])
            if rows:
                ax.plot([r["bytes"] / 1e6 for r in rows], [r["ppl"][corpus] for r in rows], style, label=kind)
                for r in rows if kind in ("anyprec", "llama.cpp") else []:
                    ax.annotate(r["name"], (r["bytes"] / 1e6, r["ppl"][corpus]), fontsize=7,
                                textcoords="offset points", xytext=(3, 3))
        base = [r for r in report["rows"] if r["kind"] == "base"]
        if base:
            ax.axhline(base[0]["ppl"][corpus], color="grey", linestyle=":", label="base")
        ax.set(xlabel="bytes in memory (MB)", ylabel="perplexity", title=f"{corpus}, {report['tokens'][corpus]} tokens")
        ax.legend()
    fig.tight_layout()
    from anyprec.fileio import atomic_path

    with atomic_path(path) as part:
        fig.savefig(part, format="png", dpi=120)
    plt.close(fig)


def check_out(out: Path) -> None:
    """Refuse an --out whose frontier files were not written by this command (never overwrite them)."""
    import json

    from anyprec.errors import OutputError

    mine = out / FILES[0]
    try:
        ours = mine.is_file() and json.loads(mine.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError):
        ours = False
    clash = [name for name in FILES if (out / name).exists()]
    if clash and not ours:
        raise OutputError(f"--out {out} already holds {', '.join(clash)} not written by `anyprec frontier`; "
                              "choose another folder")


def _wanted(rows: list[str] | None, manifest: dict, work_dir: Path | None) -> tuple[set[str], Path | None, list[str]]:
    """(row kinds to score, the work dir for dedicated/reference, notes on skipped kinds).
    Asked for explicitly, dedicated/reference without a work dir holding the Fisher fail."""
    wanted = set(ROWS if rows is None else rows)
    work, notes = None, []
    if wanted & set(BASELINES):
        work = baseline_work_dir(manifest, work_dir)
        if work is None:
            where = f"--work-dir {work_dir}" if work_dir is not None else "the default quantization work dir"
            why = (f"{where} holds no sensitivity (sensitivity/sensitivity.json): dedicated and reference rows "
                   "need the Fisher the artifact was quantized with; pass --work-dir WORK (the folder "
                   "`anyprec quantize --work-dir` used)")
            if rows is not None:
                raise UsageError(f"--rows {','.join(sorted(wanted & set(BASELINES)))}: {why}")
            notes.append(f"dedicated/reference rows skipped: {why}")
            wanted -= set(BASELINES)
    return wanted, work, notes


def run_frontier(artifact_dir: Path, out: Path, corpora: list[str], max_tokens: int | None, window: int = 2048,
                 step: float = 0.25, work_dir: Path | None = None, rows: list[str] | None = None,
                 gguf_dir: Path | None = None, types: tuple[str, ...] = LLAMACPP_TYPES,
                 baseline_bits: list[int] | None = None, progress: bool = True) -> dict[str, Any]:
    """Score the `rows` kinds (None: every one available) and write FILES into `out`; returns
    the report (frontier.json's content). baseline_bits: the widths of the dedicated and
    reference rows (default: every width of the artifact)."""
    from anyprec.calibration import heldout_split
    from anyprec.env import cache_dir
    from anyprec.fileio import sha256_file, write_json_atomic, write_text_atomic
    from anyprec.manifest import MANIFEST
    from anyprec.models import load_model
    from anyprec.packed import artifact_sizes
    from anyprec.perplexity import heldout_streams, perplexity
    from anyprec.plans import OBJECTIVE_FILE, read_objectives
    from anyprec.precision import memory_bytes
    from anyprec.runtime import load_anyprec

    check_out(out)
    plan_targets(3, 8, step)  # a bad --step fails before any model is loaded
    apm = load_anyprec(artifact_dir)
    widths = list(apm.bits_available)
    if baseline_bits and not set(baseline_bits) <= set(widths):
        raise UsageError(f"--baseline-bits {baseline_bits}: the artifact holds {widths[0]}..{widths[-1]} bits")
    wanted, work, notes = _wanted(rows, apm.manifest, work_dir)
    frac, seed = heldout_split(apm.manifest["inputs"])
    streams = heldout_streams(apm.tokenizer, corpora, frac, seed, max_tokens)

    def score(model: torch.nn.Module, label: str) -> dict[str, float]:
        return {c: perplexity(model, ids, window, progress, desc=f"ppl {c} {label}") for c, ids in streams.items()}

    sizes = artifact_sizes(artifact_dir)

    def info(precision: Any) -> dict:
        return memory_bytes(artifact_dir, precision, sizes)

    found = []
    base_ref = apm.manifest["inputs"]["base_model_ref"]
    objectives = None
    if "plans" in wanted and (OBJECTIVE_FILE in apm.manifest["files"] or work_dir is not None):
        objectives = read_objectives(artifact_dir, apm.manifest, work_dir)
    elif "plans" in wanted:  # the integer rows still stand
        notes.append(f"plans skipped: {artifact_dir} has no per-module objective table ({OBJECTIVE_FILE}); "
                     "give --work-dir (its quantization work directory) or run `anyprec plan DIR --work-dir WORK`")
    found += our_rows(apm, info, score, step, objectives, widths="ours" in wanted)
    manifest = apm.manifest
    del apm
    if wanted & {"base", *BASELINES}:
        model, _ = load_model(base_ref)
        if "base" in wanted:
            found.append(_row("base", "base (fp16 bytes)", sizes["fp16_model"], score(model, "base"), 16.0))
        methods = [m for m in BASELINES if m in wanted]
        if methods:
            found += baseline_rows(model, manifest, work, methods, baseline_bits or widths, info, score, progress)
        del model
    if "llamacpp" in wanted:
        peer_rows, why = llamacpp_rows(base_ref, score, gguf_dir or cache_dir() / "llamacpp", types)
        found += peer_rows
        notes += [why] if why else []
    report = {"format": FORMAT, "artifact": str(artifact_dir),
              "manifest_sha256": sha256_file(Path(artifact_dir) / MANIFEST), "corpora": list(corpora),
              "window": window, "max_tokens": max_tokens,
              "tokens": {c: int(ids.numel()) for c, ids in streams.items()}, "step": step, "rows": found,
              "notes": notes}
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / FILES[0], report)
    write_text_atomic(out / FILES[1], markdown_table(report))
    plot(report, out / FILES[2])
    return report


def cmd_frontier(args: argparse.Namespace) -> int:
    report = run_frontier(Path(args.dir), Path(args.out), args.corpus, args.max_tokens or None, args.window,
                          args.step, args.work_dir, parse_rows(args.rows), args.gguf_dir, tuple(args.types),
                          args.baseline_bits, progress=not args.no_progress)
    print(markdown_table(report), end="")
    print(f"wrote {', '.join(str(Path(args.out) / f) for f in FILES)}")
    return 0


def add_frontier_parser(sub: Any) -> None:
    p = sub.add_parser("frontier", help="perplexity against bytes: our widths, plans, dedicated, reference, llama.cpp")
    p.add_argument("dir", help="packed artifact directory")
    p.add_argument("--out", required=True, help="folder for frontier.json, frontier.md and frontier.png")
    p.add_argument("--rows", default=None,
                   help=f"comma-separated row kinds among {','.join(ROWS)} (default: every one available)")
    p.add_argument("--corpus", nargs="+", choices=["wiki", "news"], default=["wiki", "news"],
                   help="held-out corpora (default: both)")
    p.add_argument("--max-tokens", type=int, default=16384,
                   help="first N tokens of each corpus (default: %(default)s; 0: all)")
    p.add_argument("--window", type=int, default=2048, help="window length (capped at the model's context)")
    p.add_argument("--step", type=float, default=0.25, help="plans every STEP bits between the widths (0.25)")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="the artifact's quantization work dir: its Fisher for the dedicated/reference rows, its "
                        "objective table for plans (default: the folder `anyprec quantize` used)")
    p.add_argument("--baseline-bits", type=int, nargs="+", default=None,
                   help="widths of the dedicated/reference rows (default: every width; cached after the first run)")
    p.add_argument("--gguf-dir", type=Path, default=None, help="llama.cpp GGUFs cache (default: the anyprec cache)")
    p.add_argument("--types", nargs="+", default=list(LLAMACPP_TYPES), help="llama.cpp quantization types")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_frontier)
