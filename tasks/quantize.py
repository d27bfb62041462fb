"""Prefect tasks for the quantization stages, one per entry of `anyprec.stages.STAGES`.

`stage_task(spec)` wraps a stage's library function as a Prefect task named after the stage
and returns a StageOutput whose digest identifies the content for downstream cache keys.
Call the task via `anyprec.tasks.runner.run_stage` (cache + stamps) or `.fn(...)` (plain
function, no Prefect). The core writes per layer and resumes from what it finds in `out`;
nothing here deletes.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from prefect import Task, task
from pydantic import BaseModel

from anyprec.stages import StageRun, StageSpec
from anyprec.tasks.caching import CACHED, BaseModelInfo, StageOutput, stage_key


@task(name="resolve-base-model")
def resolve_base_model(name: str, location: str) -> BaseModelInfo:
    """Resolve a model reference to a local HF directory and hash its config + weights."""
    from anyprec.models import hash_model_dir, resolve_model_dir

    model_dir = resolve_model_dir(location)
    return BaseModelInfo(name=name, location=str(model_dir), sha256=hash_model_dir(model_dir))


def run_spec(
    spec: StageSpec, base: BaseModelInfo, upstream: dict[str, StageOutput], settings: dict[str, BaseModel], out: str
) -> StageOutput:
    """Run one stage's library function; digest = its content digest, else the hash of its inputs."""
    run = StageRun(base.ref(), settings, {name: Path(o.path) for name, o in upstream.items()}, Path(out))
    path = Path(spec.run(run))
    if spec.digest is not None:
        digest = spec.digest(path)
    else:  # deterministic stage: same inputs, same content
        digest = stage_key(spec.name, spec.version, {"base": base, "upstream": upstream, "settings": settings})
    return StageOutput(stage=spec.name, path=str(path), digest=digest)


@lru_cache(maxsize=None)
def stage_task(spec: StageSpec) -> Task:
    """The Prefect task of one stage (cached on the content of its inputs, see tasks.caching)."""

    def run(base: BaseModelInfo, upstream: dict[str, StageOutput], settings: dict[str, BaseModel],
            out: str) -> StageOutput:
        return run_spec(spec, base, upstream, settings, out)

    run.__doc__ = f"Stage {spec.name!r} of anyprec.stages.STAGES."
    return task(name=spec.name, **{**CACHED, "version": spec.version})(run)
