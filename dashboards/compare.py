"""Comparison data from MLflow: one row per (base model, precision), and its Pareto front.

A precision is an integer bit-width or a fractional one (4.5: a precision plan); `bits` is a
float column, so plans sort between the integer widths.

Reads the child runs the pipeline logs (tag kind=bits, anyprec.tasks.tracking); when a
model was run several times the latest run per (model, bits) wins, unless a parent run id
is given, in which case only that pipeline run's children are used. The frontier comes from
the `frontier/frontier.json` artifact of the newest parent run that has one.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

CHILD_KIND = "bits"
# Metric -> (label, True when larger is better) for the plots and the Pareto front.
METRICS: dict[str, tuple[str, bool]] = {
    "bytes_in_memory": ("bytes in memory", False),
    "decode_tok_s": ("decode tokens/s", True),
    "gemv_latency_us": ("GEMV latency (us)", False),
}


def load_runs(tracking_uri: str, experiment: str, parent_run_id: str | None = None) -> pd.DataFrame:
    """Child runs as a frame: columns model, bits, run_id, start_time, and one per metric."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    query = f"tags.kind = '{CHILD_KIND}'"
    if parent_run_id:
        query += f" and tags.mlflow.parentRunId = '{parent_run_id}'"
    runs = mlflow.search_runs(experiment_names=[experiment], filter_string=query, order_by=["start_time DESC"])
    if runs.empty:
        return pd.DataFrame(columns=["model", "bits", "run_id", "start_time"])
    frame = pd.DataFrame({
        "model": runs["tags.model"],
        "bits": runs["params.bits"].astype(float),
        "run_id": runs["run_id"],
        "start_time": runs["start_time"],
    })
    for column in runs.columns:
        if column.startswith("metrics."):
            frame[column[len("metrics."):]] = runs[column]
    latest = frame.sort_values("start_time", ascending=False).drop_duplicates(["model", "bits"])
    return latest.sort_values(["model", "bits"]).reset_index(drop=True)


def perplexity_columns(frame: pd.DataFrame) -> list[str]:
    """The ppl_<corpus> columns holding at least one value, sorted."""
    return sorted(c for c in frame.columns if c.startswith("ppl_") and frame[c].notna().any())


def quality_metric(frame: pd.DataFrame) -> str | None:
    """The perplexity column the front uses: wiki if logged, else the first ppl_* column."""
    ppl = perplexity_columns(frame)
    return "ppl_wiki" if "ppl_wiki" in ppl else (ppl[0] if ppl else None)


def pareto_front(frame: pd.DataFrame, cost: str, quality: str) -> pd.DataFrame:
    """Rows not dominated in (lower cost, lower quality value), sorted by cost.

    A row is dominated when another row has cost <= and quality <= with one strictly less.
    """
    rows = frame.dropna(subset=[cost, quality]).sort_values([cost, quality])
    keep, best = [], float("inf")
    for index, row in rows.iterrows():
        if row[quality] < best:
            keep.append(index)
            best = row[quality]
    return rows.loc[keep]


def load_frontier(tracking_uri: str, experiment: str, parent_run_id: str | None = None) -> dict | None:
    """The frontier report (anyprec.frontier's frontier.json) of `parent_run_id`, or of the newest
    pipeline run that logged one; None when no run has one."""
    import json

    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    query = "tags.kind = 'pipeline'" + (f" and attributes.run_id = '{parent_run_id}'" if parent_run_id else "")
    runs = mlflow.search_runs(experiment_names=[experiment], filter_string=query, order_by=["start_time DESC"],
                              output_format="list")
    client = MlflowClient()
    for run in runs:
        if any(f.path == "frontier/frontier.json" for f in client.list_artifacts(run.info.run_id, "frontier")):
            path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="frontier/frontier.json")
            return json.loads(Path(path).read_text(encoding="utf-8"))
    return None
