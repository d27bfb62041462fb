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


class LayerRun(BaseModel):
    """Where and how long one decoder layer's share of a stage ran (a mapped task run)."""

    stage: str
    layer: int
    host: str
    pid: int
    seconds: float


@lru_cache(maxsize=None)
def layer_task(spec: StageSpec) -> Task:
    """The Prefect task doing one decoder layer of a per-layer stage (`spec.layer`); the flow maps it
    over layers, so a Dask or Ray task runner spreads the layers over its workers. Not cached: the
    layer files resume themselves (written atomically, skipped when done for the same inputs)."""
    if spec.layer is None:
        raise ValueError(f"stage {spec.name!r} has no per-layer work")

    def run(base: BaseModelInfo, upstream: dict[str, StageOutput], settings: dict[str, BaseModel], out: str,
            layer: int) -> LayerRun:
        start = time.perf_counter()
        spec.layer(StageRun(base.ref(), settings, {n: Path(o.path) for n, o in upstream.items()}, Path(out), False),
                   layer)
        return LayerRun(stage=spec.name, layer=layer, host=socket.gethostname(), pid=os.getpid(),
                        seconds=round(time.perf_counter() - start, 3))

    run.__doc__ = f"One decoder layer of stage {spec.name!r}."
    return task(name=f"{spec.name}-layer", cache_policy=NO_CACHE)(run)


class ShardRun(BaseModel):
    """Where and how long one calibration shard of a stage ran (a mapped task run)."""

    stage: str
    shard: int
    host: str
    pid: int
    seconds: float


@lru_cache(maxsize=None)
def shard_task(spec: StageSpec) -> Task:
    """The Prefect task computing one calibration shard of a sharded stage (`spec.shard`); the flow
    maps it over shards, so a Dask or Ray task runner spreads them over its workers. Not cached: a
    shard's files resume themselves (a done marker keyed on its inputs)."""
    if spec.shard is None:
        raise ValueError(f"stage {spec.name!r} has no calibration shards")

    def run(base: BaseModelInfo, upstream: dict[str, StageOutput], settings: dict[str, BaseModel], out: str,
            shard: int) -> ShardRun:
        start = time.perf_counter()
        spec.shard(StageRun(base.ref(), settings, {n: Path(o.path) for n, o in upstream.items()}, Path(out), False),
                   shard)
        return ShardRun(stage=spec.name, shard=shard, host=socket.gethostname(), pid=os.getpid(),
                        seconds=round(time.perf_counter() - start, 3))

    run.__doc__ = f"One calibration shard of stage {spec.name!r}."
    return task(name=f"{spec.name}-shard", cache_policy=NO_CACHE)(run)
