"""MLflow logging: one parent run per (base model, pipeline run), one child run per precision
(an integer bit-width, or a fractional one such as 4.5: a precision plan, named "4.5-bit").

A re-run whose artifact, reports and params file are all unchanged logs nothing new: it finds
the earlier parent run by its `run_key` tag and reuses it (and says so in the log).

Child runs carry the same metric names for every bit-width, so the MLflow UI's "compare"
view lines them up: `ppl_<corpus>`, `acc_<task>`, `gemv_latency_us`, `gemv_ratio_floor`,
`gemv_ratio_bf16`, `decode_tok_s`,
`bytes_in_memory`. Every run is tagged with the DVC md5 of the artifact it measured.

The frontier (`anyprec frontier ART --out reports/<model>/frontier`, costly, so run on demand)
joins the parent run when it measured this artifact (same manifest sha256): frontier.json,
.md and .png as artifacts under `frontier/`, and each row kind's perplexity per corpus as a
metric series `frontier_<kind>_ppl_<corpus>` whose step is the row's bytes in memory (the
MLflow UI draws it against bytes: the curve). The dashboards redraw it from frontier.json.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from anyprec.config import flatten
from anyprec.tasks.caching import BaseModelInfo, StageOutput
from anyprec.tasks.layout import Layout

PARENT_KIND = "pipeline"
CHILD_KIND = "bits"
FRONTIER_DIR = "frontier"  # reports/<model>/frontier/ (the --out of `anyprec frontier`), and its MLflow path


# MLflow 3 opens a "genai_development" experiment on a traces overview; this kind opens the
# runs table, the view for comparing models.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
SOURCE = "anyprec.flows.quantize_eval"


def setup_mlflow(layout: Layout) -> str:
    """Point MLflow at the layout's tracking URI; create the experiment if needed; return its id."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(layout.tracking_uri)
    name = layout.params.pipeline.mlflow_experiment
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        layout.mlflow_artifacts_dir.mkdir(parents=True, exist_ok=True)
        return mlflow.create_experiment(name, artifact_location=layout.mlflow_artifacts_dir.as_uri(),
                                        tags=EXPERIMENT_KIND)
    for key, value in EXPERIMENT_KIND.items():
        if experiment.tags.get(key) != value:
            MlflowClient().set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def git_commit(root: Path) -> str | None:
    """HEAD of the git checkout holding `root` (None outside git)."""
    import subprocess

    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def params_record(layout: Layout) -> dict[str, str]:
    """Which params file this run used: path, sha256 of its bytes, and whether it is a copy."""
    from anyprec.fileio import sha256_file

    path = layout.params_file
    if path is None:
        return {"params_file": "(in memory)", "params_file_sha256": "", "params_copy": "true"}
    return {"params_file": str(path), "params_file_sha256": sha256_file(path),
            "params_copy": str(path.name != "params.yaml").lower()}


def run_key(packed: StageOutput, reports: dict[str, dict[str, Any]], params: dict[str, str]) -> str:
    """Identity of what a parent run records: the artifact, the reports and the params file."""
    import hashlib

    payload = json.dumps({"artifact": packed.digest, "reports": reports, "params": params["params_file_sha256"]},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def find_run(experiment_id: str, key: str) -> str | None:
    """The parent run already logged for this run key (a fully cached re-run), if any."""
    import mlflow

    query = f"tags.run_key = '{key}' and tags.kind = '{PARENT_KIND}'"
    runs = mlflow.search_runs([experiment_id], filter_string=query, max_results=1, output_format="list")
    return runs[0].info.run_id if runs else None


def child_metrics(reports: dict[str, dict[str, Any]], sizes: dict[str, Any], bits: int | float,
                  artifact_dir: str | None = None) -> dict[str, float]:
    """Metrics of one precision from the stage reports and anyprec.packed.artifact_sizes (a
    fractional precision's bytes are its plan's, resolved from `artifact_dir`)."""
    b = str(bits)
    metrics: dict[str, float] = {}
    for corpus, value in reports.get("ppl", {}).get("bits", {}).get(b, {}).items():
        metrics[f"ppl_{corpus}"] = float(value)
    for name, value in reports.get("eval", {}).get("bits", {}).get(b, {}).items():
        metrics[f"acc_{name}"] = float(value)
    for name, value in reports.get("bench", {}).get("bits", {}).get(b, {}).items():
        metrics[name] = float(value)
    per_bits = sizes.get("per_bits", {})
    entry = per_bits.get(bits) or per_bits.get(b)
    if entry:
        metrics["bytes_in_memory"] = float(entry["total"])
    elif isinstance(bits, float) and artifact_dir is not None:
        from anyprec.precision import memory_bytes

        metrics["bytes_in_memory"] = float(memory_bytes(artifact_dir, bits, sizes)["total"])
    return metrics


def parent_metrics(reports: dict[str, dict[str, Any]], sizes: dict[str, Any]) -> dict[str, float]:
    """Base-model reference figures and artifact sizes for the parent run."""
    metrics = {f"base_ppl_{c}": float(v) for c, v in reports.get("ppl", {}).get("base", {}).items()}
    for name, value in reports.get("eval", {}).get("base", {}).items():
        metrics[f"base_acc_{name}"] = float(value)
    for name, value in reports.get("bench", {}).get("base", {}).items():
        metrics[f"base_{name}"] = float(value)
    if sizes:
        metrics["artifact_bytes"] = float(sizes["artifact"]["total"])
        metrics["fp16_bytes"] = float(sizes["fp16_model"])
        metrics["separate_models_bytes"] = float(sizes["separate_sum"])
    return metrics


def _log_reports(reports: dict[str, dict[str, Any]]) -> None:
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        for name, report in reports.items():
            path = Path(tmp) / f"{name}.json"
            path.write_text(json.dumps(report, indent=2, sort_keys=True))
            mlflow.log_artifact(str(path), artifact_path="reports")


def _bits_measured(reports: dict[str, dict[str, Any]], sizes: dict[str, Any]) -> list[int | float]:
    """Every precision a report measured, ascending: 4 -> 4, "4.5" -> 4.5 (a plan)."""
    from anyprec.precision import parse_precision

    found = {parse_precision(b) for report in reports.values() for b in report.get("bits", {})}
    return sorted(found) or sorted(int(b) for b in sizes.get("per_bits", {}))


def compare_link(tracking_uri: str, experiment_id: str, run_ids: list[str]) -> str:
    """MLflow UI link comparing these runs (the local UI of scripts/services.sh for a sqlite store)."""
    from urllib.parse import quote

    ui = tracking_uri.rstrip("/") if tracking_uri.startswith("http") else "http://127.0.0.1:5000"
    runs = quote(json.dumps(run_ids, separators=(",", ":")))
    return f"{ui}/#/compare-runs?runs={runs}&experiments={quote(json.dumps([experiment_id]))}"


def _run_tags(layout: Layout, base: BaseModelInfo, packed: StageOutput, artifact_md5: str) -> dict[str, str]:
    tags = {
        "model": base.name,
        "base_model_sha256": base.sha256,
        "artifact_digest": packed.digest,
        "dvc_md5": artifact_md5,
        "artifact_path": packed.path,
        "mlflow.source.name": SOURCE,
        "mlflow.source.type": "JOB",
        **params_record(layout),
    }
    commit = git_commit(layout.root)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def publishable(reports: dict[str, dict[str, Any]], publish_under_load: bool) -> dict[str, dict[str, Any]]:
    """The reports whose figures go to MLflow: a benchmark taken under load is left out unless allowed."""
    if reports.get("bench", {}).get("machine", {}).get("under_load") and not publish_under_load:
        return {name: report for name, report in reports.items() if name != "bench"}
    return reports


def frontier_report(layout: Layout, model: str, packed: StageOutput) -> dict[str, Any] | None:
    """reports/<model>/frontier/frontier.json when it measured this very artifact (its
    manifest's sha256), else None: a frontier of an older artifact is not this run's."""
    from anyprec.fileio import sha256_file
    from anyprec.frontier import FILES, FORMAT
    from anyprec.manifest import MANIFEST

    path = layout.reports_dir / model / FRONTIER_DIR / FILES[0]
    if not path.is_file():
        return None
    report = json.loads(path.read_text(encoding="utf-8"))
    manifest = Path(packed.path) / MANIFEST
    if report.get("format") != FORMAT or report.get("manifest_sha256") != sha256_file(manifest):
        return None
    return report


def frontier_metrics(report: dict[str, Any]) -> list[tuple[str, float, int]]:
    """(metric name, perplexity, step = bytes in memory) for every row and corpus of a frontier."""
    import re

    out = []
    for row in report["rows"]:
        kind = re.sub(r"[^a-z0-9]+", "_", row["kind"].lower()).strip("_")
        out += [(f"frontier_{kind}_ppl_{corpus}", float(ppl), int(row["bytes"])) for corpus, ppl in row["ppl"].items()]
    return out


def log_frontier(folder: Path, report: dict[str, Any]) -> None:
    """Into the active run: the frontier's files under `frontier/` and its rows as metric series."""
    import time

    import mlflow
    from mlflow.entities import Metric

    from anyprec.frontier import FILES

    for name in FILES:
        if (folder / name).is_file():
            mlflow.log_artifact(str(folder / name), artifact_path=FRONTIER_DIR)
    run_id = mlflow.active_run().info.run_id
    stamp = int(time.time() * 1000)
    metrics = [Metric(name, value, stamp, step) for name, value, step in frontier_metrics(report)]
    mlflow.MlflowClient().log_batch(run_id, metrics=metrics)


@task(name="log-mlflow")
def log_pipeline_run(
    layout: Layout,
    base: BaseModelInfo,
    packed: StageOutput,
    reports: dict[str, dict[str, Any]],
    artifact_md5: str,
    run_name: str,
) -> dict[str, Any]:
    """Log the parent run and one child run per bit-width, unless the same artifact, reports and
    params file were logged before (a fully cached re-run): then reuse that run.

    Returns {"parent_run_id", "child_run_ids", "reused", "compare_url"}.
    """
    import mlflow

    from anyprec.packed import artifact_sizes

    log = get_run_logger()
    experiment_id = setup_mlflow(layout)
    params = layout.params
    tags = _run_tags(layout, base, packed, artifact_md5)
    frontier = frontier_report(layout, base.name, packed)
    key = run_key(packed, {**reports, FRONTIER_DIR: frontier} if frontier else reports, params_record(layout))
    found = find_run(experiment_id, key)
    if found is not None:
        children = mlflow.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{found}'",
                                      output_format="list")
        ids = [run.info.run_id for run in children]
        log.info("MLflow: nothing new to record (same artifact, reports and params file): reusing run %s", found)
        return {"parent_run_id": found, "child_run_ids": ids, "reused": True,
                "compare_url": compare_link(layout.tracking_uri, experiment_id, ids)}
    sizes = artifact_sizes(packed.path)
    under_load = bool(reports.get("bench", {}).get("machine", {}).get("under_load"))
    tags["bench_under_load"] = str(under_load).lower()
    figures = publishable(reports, params.benchmark.publish_under_load)
    if figures is not reports:
        before = reports["bench"]["machine"]["before"]
        log.warning("benchmark ran under load (load %.1f on %d CPUs): its figures are in bench.json but not "
                    "in MLflow; re-run on a quiet machine or set benchmark.publish_under_load", before["load1"],
                    before["cpus"])
    shared = {"model": base.name, **flatten("calibration", params.calibration),
              **flatten("quantization", params.quantization)}
    q = params.quantization
    ids = []
    parent_name = f"{base.name} {q.seed_bits}..{q.parent_bits}-bit {run_name}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=parent_name,
                          tags={**tags, "kind": PARENT_KIND, "run_key": key}) as parent:
        mlflow.log_params({**shared, **flatten("evaluation", params.evaluation),
                           **flatten("benchmark", params.benchmark), **params_record(layout)})
        mlflow.log_metrics(parent_metrics(figures, sizes))
        _log_reports(reports)
        if frontier is not None:
            log_frontier(layout.reports_dir / base.name / FRONTIER_DIR, frontier)
        for bits in _bits_measured(figures, sizes):
            with mlflow.start_run(experiment_id=experiment_id, run_name=f"{base.name} {bits}-bit",
                                  nested=True, tags={**tags, "kind": CHILD_KIND}) as child:
                mlflow.log_params({**shared, "bits": bits})
                mlflow.log_metrics(child_metrics(figures, sizes, bits, packed.path))
                ids.append(child.info.run_id)
    url = compare_link(layout.tracking_uri, experiment_id, ids)
    log.info("MLflow: parent run %s, %d child runs; compare the bit-widths: %s", parent.info.run_id, len(ids), url)
    return {"parent_run_id": parent.info.run_id, "child_run_ids": ids, "reused": False, "compare_url": url}
