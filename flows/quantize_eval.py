"""The `quantize-eval` flow: one base model through every stage, tracked in MLflow.

    resolve -> calib -> sensitivity -> seed -> nested -> packed   (anyprec.stages.STAGES;
               sensitivity mapped over calibration shards, seed and nested over
               decoder layers, as separate task runs)
            -> ppl -> eval -> bench                            (anyprec.tasks.pipeline.EVAL_STAGES)
            -> MLflow parent + child runs -> registry -> dashboard -> Prefect summary
            -> dvc commit (opt-in: pipeline.dvc_commit)

Every stage is cached on the content of its inputs (anyprec.tasks.caching): a re-run with
nothing changed recomputes nothing; changing only `evaluation` re-runs only evaluation.
Settings come from params.yaml at run time (`params_file`), never from flow code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import Task, flow, get_run_logger, unmapped
from prefect.runtime import flow_run
from pydantic import BaseModel

from anyprec import stages
from anyprec.config import DEFAULT_MODEL
from anyprec.flows.runners import THREAD_WORKERS, make_task_runner
from anyprec.tasks.caching import BaseModelInfo, StageOutput
from anyprec.tasks.layout import Layout, require_model
from anyprec.tasks.pipeline import EVAL_STAGES, sections
from anyprec.tasks.publish import publish
from anyprec.tasks.quantize import MappedRun, mapped_task, resolve_base_model, stage_task
from anyprec.tasks.runner import is_fresh, run_stage

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


def quantize_stages(layout: Layout, base: BaseModelInfo,
                    layer_runs: list[MappedRun] | None = None) -> dict[str, StageOutput]:
    """Every stage of anyprec.stages.STAGES, in order; {stage name: output}.

    A sharded stage (sensitivity) or per-layer stage (seed, nested) not yet current is first
    mapped over its calibration shards or decoder layers as separate task runs (on the task
    runner's workers); its own task then only finishes it (adds the shards up, in one fixed
    order). Each mapped run's MappedRun is appended to `layer_runs` when given."""
    done: dict[str, StageOutput] = {}
    for spec in stages.STAGES:
        out = layout.stage_path(base.name, spec.name)
        inputs = {"base": base, "upstream": {name: done[name] for name in spec.inputs},
                  "settings": stages.settings_for(spec, sections(layout.params))}
        mapped = spec.layer is not None or spec.shard is not None
        if mapped and not is_fresh(stage_task(spec), layout, out, **inputs):
            at_once = thread_tasks(layout, spec, base, inputs["settings"])
            unit = "shard" if spec.shard is not None else "layer"
            runs = map_units(spec, unit, out, at_once=at_once, **inputs)
            if layer_runs is not None:
                layer_runs.extend(runs)
        done[spec.name] = run_stage(stage_task(spec), layout, out, **inputs)
    return done


def thread_tasks(layout: Layout, spec: stages.StageSpec, base: BaseModelInfo,
                 settings: dict[str, BaseModel]) -> int | None:
    """Mapped tasks of `spec` at once in the flow's process (thread runner; None: a cluster's
    workers, each with its own memory): pipeline.thread_tasks, else what fits in available memory."""
    import psutil

    pipeline = layout.params.pipeline
    if pipeline.task_runner != "thread":
        return None
    if pipeline.thread_tasks is not None:
        get_run_logger().info("%s: %d tasks at once (pipeline.thread_tasks)", spec.name, pipeline.thread_tasks)
        return pipeline.thread_tasks
    need, have = stages.mapped_task_bytes(spec, base.location, settings), psutil.virtual_memory().available
    at_once = stages.tasks_at_once(need, have, THREAD_WORKERS)
    get_run_logger().info("%s: %d tasks at once (pipeline.thread_tasks: null; ~%.2f GiB each, %.1f GiB available)",
                          spec.name, at_once, need / 2**30, have / 2**30)
    return at_once


def _map_in_waves(task: Task, count: int, at_once: int | None, **fixed: Any) -> list[Any]:
    """task.map over `index` in range(count), at most `at_once` runs in flight (None: all)."""
    step = at_once or count
    results = []
    for start in range(0, count, step):
        futures = task.map(**{name: unmapped(value) for name, value in fixed.items()},
                           index=list(range(start, min(count, start + step))))
        results.extend(future.result() for future in futures)
    return results


def map_units(spec: stages.StageSpec, unit: str, out: Path, base: BaseModelInfo, upstream: dict[str, StageOutput],
              settings: dict[str, BaseModel], at_once: int | None = None) -> list[MappedRun]:
    """Run one task per `unit` of `spec`, calibration shards or decoder layers (at most `at_once` in
    flight), and wait for all."""
    count = spec.shard_count(settings) if unit == "shard" else stages.layer_count(base.location)
    runs = _map_in_waves(mapped_task(spec, unit), count, at_once, base=base, upstream=upstream, settings=settings,
                         out=str(out))
    workers = sorted({(run.host, run.pid) for run in runs})
    get_run_logger().info("%s: %d %ss ran as separate tasks on %d worker process(es), %.1f s of work",
                          spec.name, count, unit, len(workers), sum(run.seconds for run in runs))
    return runs


def evaluation_stages(layout: Layout, base: BaseModelInfo, packed: StageOutput) -> dict[str, dict[str, Any]]:
    """The enabled stages of EVAL_STAGES, one after the other; {report name: content}.

    Sequential: each already uses every core through torch, so overlapping them on one
    machine only thrashes (and races transformers' lazy imports between threads).
    """
    p = layout.params
    return {
        spec.name: run_stage(spec.task, layout, layout.stage_path(base.name, spec.name), base=base, packed=packed,
                             **spec.arguments(p))
        for spec in EVAL_STAGES if spec.enabled(p)
    }


@flow(name=FLOW_NAME, log_prints=True, validate_parameters=True)
def quantize_eval(
    model: str = DEFAULT_MODEL, params_file: str = "params.yaml", model_path: str | None = None,
    bits: list[float] | None = None,
) -> PipelineSummary:
    """Quantize `model` (a params.yaml models key, or an inbox folder via model_path) and evaluate it
    at `bits` (default: params.yaml's evaluation.bits; 4.5 evaluates a precision plan)."""
    layout = with_bits(Layout.from_file(params_file), bits)
    location = require_model(layout, model, model_path)
    base = resolve_base_model(model, location)
    packed = quantize_stages(layout, base)[stages.PACKED]
    reports = evaluation_stages(layout, base, packed)
    run_name = f"{model}@{flow_run.get_name() or 'local'}"
    published = publish(layout, base, packed, reports, run_name)
    get_run_logger().info("%s: MLflow parent run %s, dashboard %s, compare the bit-widths: %s", model,
                          published["parent_run_id"], published["dashboard"], published["compare_url"])
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


def with_bits(layout: Layout, bits: list[float] | None) -> Layout:
    """The layout with evaluation.bits replaced (validated as params.yaml's would be)."""
    if bits is None:
        return layout
    from dataclasses import replace

    from anyprec.config import EvaluationConfig

    evaluation = EvaluationConfig(**{**layout.params.evaluation.model_dump(), "bits": bits})
    return replace(layout, params=layout.params.model_copy(update={"evaluation": evaluation}))


def run_quantize_eval(model: str, params_file: str = "params.yaml", model_path: str | None = None,
                      bits: list[float] | None = None) -> PipelineSummary:
    """Run the flow in this process with the task runner params.yaml chooses."""
    layout = Layout.from_file(params_file)
    runner = make_task_runner(layout.params.pipeline)
    return quantize_eval.with_options(task_runner=runner)(model=model, params_file=params_file, model_path=model_path,
                                                          bits=bits)
