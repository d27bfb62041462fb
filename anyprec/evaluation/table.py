"""Results tables (markdown + JSON), the paper's deltas, MLflow-ready metrics and plots.

Input is the report of runner.run_evaluation. Tables have one row per bit-width and one
column per method; the base model (bit-independent) is shown in every row. Deltas:
ours vs dedicated and ours vs reference, perplexity in percent of the other method's
value, accuracy in points (x100), weighted objective as a ratio.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from anyprec.fileio import write_text_atomic

COMPARED = ("dedicated", "dedicated-optimal", "reference")


def metric_names(report: dict[str, Any]) -> list[str]:
    """Every metric present in the report, perplexities first, then means, then per task."""
    names: set[str] = set(report.get("base", {}))
    for per_bits in report.get("methods", {}).values():
        for metrics in per_bits.values():
            names.update(metrics)
    return sorted(names, key=_metric_order)


def _metric_order(name: str) -> tuple:
    """Sort key: perplexities, then means, then per-task accuracies (acc before acc_norm)."""
    return (not name.startswith("ppl_"), not name.endswith("_mean"), name.startswith("acc_norm"), name)


def bits_of(report: dict[str, Any]) -> list[int | float]:
    """Precisions evaluated, ascending: integer widths and fractional ones (plans, e.g. 4.5)."""
    found = {b for per_bits in report.get("methods", {}).values() for b in per_bits}
    found |= {str(b) for b in report.get("settings", {}).get("bits", [])}
    return sorted(int(b) if float(b).is_integer() else float(b) for b in found)


def value(report: dict[str, Any], method: str, bits: int, metric: str) -> float:
    """One cell: the metric of `method` at `bits` (base ignores bits; "objective" is the total)."""
    if metric == "objective":
        entry = report.get("objective", {}).get(method, {}).get(str(bits))
        return float(entry["total"]) if entry else math.nan
    if method == "base":
        return float(report.get("base", {}).get(metric, math.nan))
    return float(report.get("methods", {}).get(method, {}).get(str(bits), {}).get(metric, math.nan))


def methods_of(report: dict[str, Any]) -> list[str]:
    """Methods in the report, base first."""
    return (["base"] if "base" in report else []) + list(report.get("methods", {}))


def _delta(ours: float, other: float, metric: str) -> float:
    """ppl: percent of other; acc: points; objective: ratio."""
    if metric.startswith("ppl_"):
        return 100.0 * (ours - other) / other
    if metric == "objective":
        return ours / other if other else math.nan
    return 100.0 * (ours - other)


def deltas(report: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """{other: {bits: {metric: delta of ours vs other}}} for each of COMPARED that was evaluated."""
    metrics = [m for m in metric_names(report) if m.startswith("ppl_") or m == "acc_mean"] + ["objective"]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for other in COMPARED:
        if other not in report.get("methods", {}) or "ours" not in report.get("methods", {}):
            continue
        out[other] = {str(b): {m: _delta(value(report, "ours", b, m), value(report, other, b, m), m)
                               for m in metrics} for b in bits_of(report)}
    return out


def _fmt(x: float, metric: str) -> str:
    if math.isnan(x):
        return "-"
    if metric == "objective":
        return f"{x:.4g}"
    return f"{x:.3f}" if metric.startswith("ppl_") else f"{100 * x:.1f}"


def metric_table(report: dict[str, Any], metric: str) -> str:
    """Markdown table: rows = bit-width, columns = methods (accuracy shown in percent)."""
    methods = [m for m in methods_of(report) if not (metric == "objective" and m == "base")]
    lines = ["| bits | " + " | ".join(methods) + " |", "|---:|" + "---:|" * len(methods)]
    for b in bits_of(report):
        cells = [_fmt(value(report, m, b, metric), metric) for m in methods]
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _unit(metric: str) -> str:
    return "%" if metric.startswith("ppl_") else ("x" if metric == "objective" else "pts")


def delta_table(report: dict[str, Any]) -> str:
    """Markdown table of deltas: ppl in %, acc_mean in points, objective as ours/other."""
    table = deltas(report)
    if not table:
        return "(no deltas: needs 'ours' and 'dedicated' or 'reference')"
    columns = [(other, m) for other, per_bits in table.items() for m in next(iter(per_bits.values()))]
    header = [f"{m} ({_unit(m)}) vs {other}" for other, m in columns]
    lines = ["| bits | " + " | ".join(header) + " |", "|---:|" + "---:|" * len(columns)]
    for b in bits_of(report):
        cells = [table[other][str(b)][m] for other, m in columns]
        lines.append(f"| {b} | " + " | ".join("-" if math.isnan(c) else f"{c:+.3f}" for c in cells) + " |")
    return "\n".join(lines)


def markdown_report(report: dict[str, Any]) -> str:
    """All tables: one per metric (perplexity, mean and per-task accuracy in %, objective), then deltas."""
    parts = []
    for metric in [*metric_names(report), "objective"]:
        if metric.startswith("acc_norm"):
            continue
        parts.append(f"### {metric}\n\n{metric_table(report, metric)}")
    parts.append(f"### ours vs baselines\n\n{delta_table(report)}")
    return "\n\n".join(parts) + "\n"


def mlflow_metrics(report: dict[str, Any]) -> list[tuple[str, float, int]]:
    """(key, value, step=bits) triples: "<method>/<metric>" and "delta_vs_<other>/<metric>".

    The base model's metrics repeat at every step so it plots as a reference line. NaNs dropped.
    MLflow steps are integers, so only integer widths are rows here; a fractional precision's
    figures go to its own child run (anyprec.tasks.tracking).
    """
    rows = []
    metrics = [*metric_names(report), "objective"]
    for b in (b for b in bits_of(report) if isinstance(b, int)):
        for method in methods_of(report):
            rows += [(f"{method}/{m}", value(report, method, b, m), b) for m in metrics]
        for other, per_bits in deltas(report).items():
            rows += [(f"delta_vs_{other}/{m}", d, b) for m, d in per_bits.get(str(b), {}).items()]
    return [(k, float(v), s) for k, v, s in rows if not math.isnan(v)]


def write_json(report: dict[str, Any], path: str | Path) -> Path:
    """The report plus its deltas as indented JSON, written atomically."""
    path = Path(path)
    write_text_atomic(path, json.dumps({**report, "deltas": deltas(report)}, indent=2, sort_keys=False) + "\n")
    return path


def write_markdown(report: dict[str, Any], path: str | Path) -> Path:
    """markdown_report(report) to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown_report(report))
    return path


def plot_metric(report: dict[str, Any], metric: str, path: str | Path) -> Path:
    """PNG of `metric` against bit-width, one line per method (base dashed). matplotlib Agg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bits = bits_of(report)
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in methods_of(report):
        ys = [value(report, method, b, metric) for b in bits]
        style = {"linestyle": "--", "color": "black"} if method == "base" else {"marker": "o"}
        ax.plot(bits, ys, label=method, **style)
    ax.set_xlabel("bits")
    ax.set_ylabel(metric)
    if metric.startswith("ppl_") or metric == "objective":
        ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
