"""MLflow logging: one parent run per (base model, pipeline run), one child run per bit-width.

Child runs carry the same metric names for every bit-width, so the MLflow UI's "compare"
view lines them up: `ppl_<corpus>`, `acc_<task>`, `gemv_latency_us`, `gemv_ratio_floor`,
`gemv_ratio_bf16`, `decode_tok_s`,
`bytes_in_memory`. Every run is tagged with the DVC md5 of the artifact it measured.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from prefect import task

from anyprec.config import flatten
from anyprec.tasks.caching import BaseModelInfo, StageOutput
from anyprec.tasks.layout import Layout

PARENT_KIND = "pipeline"
CHILD_KIND = "bits"


def setup_mlflow(layout: Layout) -> str:
    """Point MLflow at the layout's tracking URI; create the experiment if needed; return its id."""
    import mlflow

    mlflow.set_tracking_uri(layout.tracking_uri)
    name = layout.params.pipeline.mlflow_experiment
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    layout.mlflow_artifacts_dir.mkdir(parents=True, exist_ok=True)
    return mlflow.create_experiment(name, artifact_location=layout.mlflow_artifacts_dir.as_uri())


def child_metrics(reports: dict[str, dict[str, Any]], sizes: dict[str, Any], bits: int) -> dict[str, float]:
    """Metrics of one bit-width from the stage reports and anyprec.packed.artifact_sizes."""
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


def _bits_measured(reports: dict[str, dict[str, Any]], sizes: dict[str, Any]) -> list[int]:
    found = {int(b) for report in reports.values() for b in report.get("bits", {})}
    return sorted(found) or sorted(int(b) for b in sizes.get("per_bits", {}))


@task(name="log-mlflow")
def log_pipeline_run(
    layout: Layout,
    base: BaseModelInfo,
    packed: StageOutput,
    reports: dict[str, dict[str, Any]],
    artifact_md5: str,
    run_name: str,
) -> str:
    """Log the parent run and one child run per bit-width; return the parent run id."""
    import mlflow

    from anyprec.packed import artifact_sizes

    experiment_id = setup_mlflow(layout)
    params = layout.params
    sizes = artifact_sizes(packed.path)
    tags = {
        "model": base.name,
        "base_model_sha256": base.sha256,
        "artifact_digest": packed.digest,
        "dvc_md5": artifact_md5,
        "artifact_path": packed.path,
    }
    shared = {"model": base.name, **flatten("calibration", params.calibration),
              **flatten("quantization", params.quantization)}
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name,
                          tags={**tags, "kind": PARENT_KIND}) as parent:
        mlflow.log_params({**shared, **flatten("evaluation", params.evaluation),
                           **flatten("benchmark", params.benchmark)})
        mlflow.log_metrics(parent_metrics(reports, sizes))
        _log_reports(reports)
        for bits in _bits_measured(reports, sizes):
            with mlflow.start_run(experiment_id=experiment_id, run_name=f"{base.name}-{bits}bit",
                                  nested=True, tags={**tags, "kind": CHILD_KIND}):
                mlflow.log_params({**shared, "bits": bits})
                mlflow.log_metrics(child_metrics(reports, sizes, bits))
        return parent.info.run_id
