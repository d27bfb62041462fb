"""The `quantize-eval` flow: one base model through every stage, tracked in MLflow.

    resolve -> calibration -> sensitivity -> seed -> upscaling -> packing
            -> perplexity -> lm-eval -> bench
            -> MLflow parent + child runs -> registry -> dashboard -> dvc commit

Every stage is cached on the content of its inputs (anyprec.tasks.caching): a re-run with
nothing changed recomputes nothing; changing only `evaluation` re-runs only evaluation.
Settings come from params.yaml at run time (`params_file`), never from flow code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel

from anyprec.config import DEFAULT_MODEL
from anyprec.env import apply_offline_env
from anyprec.flows.runners import make_task_runner
from anyprec.tasks import evaluate as ev
from anyprec.tasks import quantize as q
from anyprec.tasks.bench import bench
from anyprec.tasks.caching import BaseModelInfo, StageOutput
from anyprec.tasks.layout import Layout, Stage, require_model
from anyprec.tasks.publish import publish
from anyprec.tasks.runner import run_stage

apply_offline_env()

FLOW_NAME = "quantize-eval"


class PipelineSummary(BaseModel):
    """What one quantize-eval run produced."""

    model: str
    base_model_sha256: str
    artifact: str
    artifact_digest: str
    dvc_md5: str
    mlflow_parent_run_id: str
    registered_version: str | None
    dashboard: str | None
    reports: dict[str, dict[str, Any]]


def quantize_stages(layout: Layout, base: BaseModelInfo) -> tuple[StageOutput, StageOutput]:
    """Calibration -> sensitivity -> seed -> upscaling -> packing; returns (calib, packed)."""
    p, path = layout.params, (lambda stage: layout.stage_path(base.name, stage))
    calib = run_stage(q.prepare_calibration, layout, path(Stage.CALIBRATION), base=base, calibration=p.calibration)
    sens = run_stage(q.sensitivity, layout, path(Stage.SENSITIVITY), base=base, calib=calib)
    seed = run_stage(q.seed_quantization, layout, path(Stage.SEED), base=base, sens=sens, quantization=p.quantization)
    nested = run_stage(
        q.upscaling, layout, path(Stage.NESTED), base=base, sens=sens, seed=seed, quantization=p.quantization
    )
    packed = run_stage(
        q.packing, layout, path(Stage.PACKED),
        base=base, calib=calib, nested=nested, calibration=p.calibration, quantization=p.quantization,
    )
    return calib, packed


def evaluation_stages(layout: Layout, base: BaseModelInfo, packed: StageOutput) -> dict[str, dict[str, Any]]:
    """Perplexity, lm-eval, then the benchmark; {report name: content}.

    One after the other: each already uses every core through torch, so overlapping them on
    one machine only thrashes (and races transformers' lazy imports between threads).
    """
    p, path = layout.params, (lambda stage: layout.stage_path(base.name, stage))
    reports = {
        Stage.PERPLEXITY.value: run_stage(
            ev.perplexity, layout, path(Stage.PERPLEXITY),
            base=base, packed=packed, bits=p.evaluation.bits, corpora=list(p.evaluation.ppl_corpora),
            window=p.evaluation.ppl_window, max_tokens=p.evaluation.ppl_max_tokens,
            eval_fraction=p.calibration.eval_fraction, split_seed=p.calibration.seed,
        ),
        Stage.LM_EVAL.value: run_stage(
            ev.lm_eval, layout, path(Stage.LM_EVAL),
            base=base, packed=packed, bits=p.evaluation.bits, tasks=p.evaluation.tasks, limit=p.evaluation.limit,
        ),
    }
    if p.benchmark.bits:  # last: timings taken with nothing else running in this flow
        reports[Stage.BENCH.value] = run_stage(
            bench, layout, path(Stage.BENCH), base=base, packed=packed, benchmark=p.benchmark
        )
    return reports


@flow(name=FLOW_NAME, log_prints=True, validate_parameters=True)
def quantize_eval(
    model: str = DEFAULT_MODEL, params_file: str = "params.yaml", model_path: str | None = None
) -> PipelineSummary:
    """Quantize `model` (a params.yaml models key, or an inbox folder via model_path) and evaluate it."""
    layout = Layout.from_file(params_file)
    location = require_model(layout, model, model_path)
    base = q.resolve_base_model(model, location)
    _calib, packed = quantize_stages(layout, base)
    reports = evaluation_stages(layout, base, packed)
    run_name = f"{model}@{flow_run.get_name() or 'local'}"
    published = publish(layout, base, packed, reports, run_name)
    get_run_logger().info("%s: MLflow parent run %s, dashboard %s", model, published["parent_run_id"],
                          published["dashboard"])
    return PipelineSummary(
        model=model,
        base_model_sha256=base.sha256,
        artifact=str(Path(packed.path)),
        artifact_digest=packed.digest,
        dvc_md5=published["dvc_md5"],
        mlflow_parent_run_id=published["parent_run_id"],
        registered_version=published["version"],
        dashboard=published["dashboard"],
        reports=reports,
    )


def run_quantize_eval(model: str, params_file: str = "params.yaml", model_path: str | None = None) -> PipelineSummary:
    """Run the flow in this process with the task runner params.yaml chooses."""
    layout = Layout.from_file(params_file)
    runner = make_task_runner(layout.params.pipeline)
    return quantize_eval.with_options(task_runner=runner)(model=model, params_file=params_file, model_path=model_path)
