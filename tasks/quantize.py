"""Prefect tasks for the quantization stages, one per entry of `anyprec.stages.STAGES`.

`stage_task(spec)` wraps a stage's library function as a Prefect task named after the stage
and returns a StageOutput whose digest identifies the content for downstream cache keys.
Call the task via `anyprec.tasks.runner.run_stage` (cache + stamps) or `.fn(...)` (plain
function, no Prefect). The core writes per layer and resumes from what it finds in `out`;
nothing here deletes.
"""

from __future__ import annotations

import os
import socket
import time
from functools import lru_cache
from pathlib import Path

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
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


MAPPED_UNITS = ("layer", "shard")  # a decoder layer of a per-layer stage, a calibration shard of a sharded one


class MappedRun(BaseModel):
    """Where and how long one mapped unit of a stage ran (a decoder layer or a calibration shard)."""

    stage: str
    unit: str
    index: int
    host: str
    pid: int
    seconds: float


@lru_cache(maxsize=None)
def mapped_task(spec: StageSpec, unit: str) -> Task:
    """The Prefect task doing one `unit` (MAPPED_UNITS) of a stage: `spec.layer` or `spec.shard`; the
    flow maps it over the units, so a Dask or Ray task runner spreads them over its workers. Not
    cached: a unit's files resume themselves (written atomically, skipped when done for the same inputs)."""
    if unit not in MAPPED_UNITS:
        raise ValueError(f"unit {unit!r} is not one of {', '.join(MAPPED_UNITS)}")
    work = getattr(spec, unit)
    if work is None:
        raise ValueError(f"stage {spec.name!r} has no per-{unit} work")

    def run(base: BaseModelInfo, upstream: dict[str, StageOutput], settings: dict[str, BaseModel], out: str,
            index: int) -> MappedRun:
        start = time.perf_counter()
        work(StageRun(base.ref(), settings, {n: Path(o.path) for n, o in upstream.items()}, Path(out), False), index)
        return MappedRun(stage=spec.name, unit=unit, index=index, host=socket.gethostname(), pid=os.getpid(),
                         seconds=round(time.perf_counter() - start, 3))

    run.__doc__ = f"One {unit} of stage {spec.name!r}."
    return task(name=f"{spec.name}-{unit}", cache_policy=NO_CACHE)(run)
