"""After evaluation: DVC md5, MLflow runs, registry version, dashboard, dvc commit (tasks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from anyprec.tasks.caching import BaseModelInfo, StageOutput, current_stamps, restamp
from anyprec.tasks.layout import Layout
from anyprec.tasks.pipeline import stage_names
from anyprec.tasks.registry import register_artifact
from anyprec.tasks.tracking import log_pipeline_run, setup_mlflow
from anyprec.tasks.versioning import dvc_commit, dvc_md5


@task(name="dvc-md5")
def artifact_md5(path: str) -> str:
    """The md5 DVC gives the packed artifact (as in dvc.lock)."""
    return dvc_md5(path)


@task(name="dashboard")
def render_dashboard(layout: Layout, model: str, parent_run_id: str) -> str:
    """Plots + HTML over every model's latest runs -> reports/<model>/dashboard/, attached to the parent run."""
    import mlflow

    from anyprec.dashboards.compare import load_runs
    from anyprec.dashboards.render import render_dashboard as render

    setup_mlflow(layout)
    frame = load_runs(layout.tracking_uri, layout.params.pipeline.mlflow_experiment)
    page = render(frame, layout.dashboard_dir(model), title=f"anyprec: {model} vs the other base models")
    with mlflow.start_run(run_id=parent_run_id):
        mlflow.log_artifacts(str(page.parent), artifact_path="dashboard")
    return str(page)


@task(name="dvc-commit")
def commit_outputs(root: str, model: str) -> str:
    """Record the flow's outputs for this model in dvc.lock (so `dvc status` is clean)."""
    return dvc_commit(Path(root), model)


def _should_commit(layout: Layout, model: str) -> bool:
    pipeline = layout.params.pipeline
    return pipeline.dvc_commit and model in pipeline.dvc_models and (layout.root / ".dvc").is_dir()


def publish(
    layout: Layout, base: BaseModelInfo, packed: StageOutput, reports: dict[str, dict[str, Any]], run_name: str
) -> dict[str, Any]:
    """Run the publishing tasks; returns {dvc_md5, parent_run_id, version, dashboard}."""
    md5 = artifact_md5(packed.path)
    parent = log_pipeline_run(layout, base, packed, reports, md5, run_name)
    version = register_artifact(layout, base.name, packed, md5, parent)
    dashboard = render_dashboard(layout, base.name, parent)
    if _should_commit(layout, base.name):
        # dvc commit moves outputs into its cache and links/copies them back: same bytes, new
        # stat. Re-stamp what was current so the next identical run is still a cache hit.
        current = current_stamps(layout.results_dir, [layout.stage_path(base.name, s) for s in stage_names()])
        try:
            commit_outputs(str(layout.root), base.name)
        except RuntimeError as err:  # the artifacts and runs stand; only dvc.lock is behind
            get_run_logger().warning("dvc commit failed; run `dvc commit` by hand: %s", err)
        restamp(layout.results_dir, current)
    return {"dvc_md5": md5, "parent_run_id": parent, "version": version, "dashboard": dashboard}
