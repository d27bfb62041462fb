"""After evaluation: DVC md5, MLflow runs, registry version + alias, dashboard, a Prefect
markdown artifact per flow run, and (opt-in) dvc commit."""

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

    from anyprec.dashboards.compare import load_frontier, load_runs
    from anyprec.dashboards.render import render_dashboard as render

    setup_mlflow(layout)
    experiment = layout.params.pipeline.mlflow_experiment
    frame = load_runs(layout.tracking_uri, experiment)
    page = render(frame, layout.dashboard_dir(model), frontier=load_frontier(layout.tracking_uri, experiment,
                                                                                 parent_run_id))
    with mlflow.start_run(run_id=parent_run_id):
        mlflow.log_artifacts(str(page.parent), artifact_path="dashboard")
    return str(page)


@task(name="dvc-commit")
def commit_outputs(root: str, model: str) -> str:
    """Record the flow's outputs for this model in dvc.lock (so `dvc status` is clean)."""
    return dvc_commit(Path(root), model)


def _should_commit(layout: Layout, model: str) -> bool:
    """dvc commit is opt-in (pipeline.dvc_commit) and only for models dvc.yaml reproduces."""
    pipeline, log = layout.params.pipeline, get_run_logger()
    if model not in pipeline.dvc_models:
        log.info("DVC: %s is not in pipeline.dvc_models, so dvc.yaml has no stages for it and DVC does not "
                 "track its outputs; add it there (and re-render dvc.yaml) to version it with DVC", model)
        return False
    if not pipeline.dvc_commit or not (layout.root / ".dvc").is_dir():
        return False
    if layout.params_file is not None and layout.params_file.name != "params.yaml":
        log.warning("DVC: this run used %s, not params.yaml; dvc.lock records params.yaml's values, so the "
                    "outputs are not committed to it", layout.params_file)
        return False
    return True


def summary_markdown(model: str, reports: dict[str, dict[str, Any]], mlflow_run: dict[str, Any],
                     dashboard: str, version: str) -> str:
    """The flow run's Prefect artifact: one row per bit-width, links to MLflow and the dashboard."""
    ppl, acc, bench = (reports.get(name, {}).get("bits", {}) for name in ("ppl", "eval", "bench"))
    corpora = sorted({c for row in ppl.values() for c in row})
    header = ["bits", *(f"ppl {c}" for c in corpora), "mean acc", "decode tok/s", "GEMV us"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for b in sorted(set(ppl) | set(acc) | set(bench), key=float):  # 4.5 (a plan) sorts between 4 and 5
        accs = list(acc.get(b, {}).values())
        cells = [b, *(f"{ppl.get(b, {}).get(c, float('nan')):.3f}" for c in corpora),
                 f"{sum(accs) / len(accs):.3f}" if accs else "",
                 f"{bench.get(b, {}).get('decode_tok_s', float('nan')):.1f}" if b in bench else "",
                 f"{bench.get(b, {}).get('gemv_latency_us', float('nan')):.1f}" if b in bench else ""]
        lines.append("| " + " | ".join(cells) + " |")
    note = " (reused: nothing changed since that run)" if mlflow_run["reused"] else ""
    return "\n".join([
        f"## {model}: any-precision artifact, registered version {version}", "", *lines, "",
        f"- MLflow parent run `{mlflow_run['parent_run_id']}`{note}; compare the bit-widths: "
        f"[MLflow compare]({mlflow_run['compare_url']})",
        f"- Dashboard: `{dashboard}`",
    ])


def publish(
    layout: Layout, base: BaseModelInfo, packed: StageOutput, reports: dict[str, dict[str, Any]], run_name: str
) -> dict[str, Any]:
    """Run the publishing tasks; returns {dvc_md5, parent_run_id, version, dashboard, compare_url}."""
    from prefect.artifacts import create_markdown_artifact

    md5 = artifact_md5(packed.path)
    run = log_pipeline_run(layout, base, packed, reports, md5, run_name)
    version = register_artifact(layout, base.name, packed, md5, run["parent_run_id"])
    dashboard = render_dashboard(layout, base.name, run["parent_run_id"])
    create_markdown_artifact(summary_markdown(base.name, reports, run, dashboard, version),
                             key=f"quantize-eval-{base.name}".replace("_", "-").replace(".", "-").lower(),
                             description=f"{base.name}: figures per bit-width and links")
    if _should_commit(layout, base.name):
        # dvc commit moves outputs into its cache and links/copies them back: same bytes, new
        # stat. Re-stamp what was current so the next identical run is still a cache hit.
        current = current_stamps(layout.results_dir, [layout.stage_path(base.name, s) for s in stage_names()])
        try:
            commit_outputs(str(layout.root), base.name)
        except RuntimeError as err:  # the artifacts and runs stand; only dvc.lock is behind
            get_run_logger().warning("dvc commit failed; run `dvc commit` by hand: %s", err)
        restamp(layout.results_dir, current)
    return {"dvc_md5": md5, "parent_run_id": run["parent_run_id"], "version": version, "dashboard": dashboard,
            "compare_url": run["compare_url"]}
