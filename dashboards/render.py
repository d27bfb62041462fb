"""Comparison plots (PNG) and a self-contained HTML page from the frame of compare.load_runs.

Plots: perplexity vs bits (one plot per corpus), decode throughput, GEMV latency and memory
vs bits (one line per base model), perplexity vs memory with the Pareto front, and, given a
frontier report, the frontier (one panel per corpus: our widths, plans, dedicated, reference,
llama.cpp against bytes in memory). The HTML embeds the PNGs as data
URIs (it opens anywhere, including as an MLflow artifact) and, once loaded, records in
`body[data-plots-loaded]` how many plots the browser actually decoded (checked by a test
in headless Chromium).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from anyprec.dashboards.compare import METRICS, pareto_front, perplexity_columns, quality_metric

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em}} img{{max-width:100%;border:1px solid #ccc}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}</style>
</head><body data-plots-expected="{expected}">
<h1>{title}</h1>
{figures}
<h2>Runs</h2>
{table}
<script>
window.addEventListener("load", function () {{
  var ok = Array.from(document.querySelectorAll("img.plot")).filter(function (i) {{
    return i.complete && i.naturalWidth > 0; }});
  document.body.setAttribute("data-plots-loaded", String(ok.length));
}});
</script>
</body></html>
"""


def _vs_bits(frame: pd.DataFrame, metric: str, label: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=100)
    for model, rows in frame.dropna(subset=[metric]).groupby("model"):
        rows = rows.sort_values("bits")  # plans (4.5) between the integer widths
        ax.plot(rows["bits"], rows[metric], marker="o", label=model)
    ax.set_xlabel("bits")
    ax.set_ylabel(label)
    ax.set_title(f"{label} vs bits")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _pareto(frame: pd.DataFrame, quality: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = pareto_front(frame, "bytes_in_memory", quality)
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=100)
    for model, rows in frame.dropna(subset=["bytes_in_memory", quality]).groupby("model"):
        ax.scatter(rows["bytes_in_memory"] / 2**20, rows[quality], label=model)
        for _, row in rows.iterrows():
            ax.annotate(f"{row['bits']:g}b", (row["bytes_in_memory"] / 2**20, row[quality]), fontsize=7)
    ax.step(front["bytes_in_memory"] / 2**20, front[quality], where="post", color="black", label="Pareto front")
    ax.set_xlabel("MiB in memory")
    ax.set_ylabel(quality.replace("_", " "))
    ax.set_title("quality vs memory")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def render_plots(frame: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Write one PNG per metric present in the frame (+ the Pareto plot); return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    quality = quality_metric(frame)
    panels = [(c, f"perplexity ({c[len('ppl_'):]})") for c in perplexity_columns(frame)]
    panels += [(m, lbl) for m, (lbl, _) in METRICS.items()]
    paths = [
        _vs_bits(frame, metric, label, out_dir / f"{metric}_vs_bits.png")
        for metric, label in panels
        if metric in frame.columns and frame[metric].notna().any()
    ]
    if quality and "bytes_in_memory" in frame.columns:
        paths.append(_pareto(frame, quality, out_dir / "pareto.png"))
    return paths


def render_html(frame: pd.DataFrame, plots: list[Path], path: str | Path, title: str) -> Path:
    """A single HTML file with the plots embedded and the run table."""
    figures = "\n".join(
        f'<figure><img class="plot" alt="{html.escape(p.stem)}" '
        f'src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        f"<figcaption>{html.escape(p.stem)}</figcaption></figure>"
        for p in plots
    )
    table = frame.drop(columns=["start_time"], errors="ignore").to_html(index=False, float_format="%.4g")
    path = Path(path)
    path.write_text(PAGE.format(title=html.escape(title), expected=len(plots), figures=figures, table=table),
                    encoding="utf-8")
    return path


def title_for(frame: pd.DataFrame) -> str:
    """A title naming what the page shows: the base models and the perplexity corpora."""
    models = sorted(frame["model"].unique())
    corpora = [c[len("ppl_"):] for c in perplexity_columns(frame)]
    shown = f"perplexity on {' and '.join(corpora)}, speed and memory" if corpora else "speed and memory"
    subject = models[0] if len(models) == 1 else f"{len(models)} base models ({', '.join(models)})"
    return f"anyprec: {subject}, {shown} per bit-width"


def render_frontier(report: dict, out_dir: str | Path) -> Path:
    """frontier.png (one panel per corpus) from a frontier report, drawn as `anyprec frontier` draws it."""
    from anyprec.frontier import plot

    path = Path(out_dir) / "frontier.png"
    plot(report, path)
    return path


def render_dashboard(frame: pd.DataFrame, out_dir: str | Path, title: str | None = None,
                     frontier: dict | None = None) -> Path:
    """PNGs + index.html under out_dir; returns the HTML path. Title: `title_for(frame)` unless given;
    frontier: a frontier report (compare.load_frontier) adds its plot."""
    if frame.empty:
        raise ValueError("no child runs to plot: run the quantize-eval flow first (MLflow has no runs tagged kind=bits)")
    out_dir = Path(out_dir)
    plots = render_plots(frame, out_dir) + ([render_frontier(frontier, out_dir)] if frontier else [])
    return render_html(frame, plots, out_dir / "index.html", title or title_for(frame))
