"""Task runner as a configuration choice (params.yaml pipeline.task_runner).

- thread (default): Prefect's ThreadPoolTaskRunner in the flow process.
- dask: prefect-dask's DaskTaskRunner; `task_runner_address` names an existing scheduler
  (e.g. tcp://10.0.0.5:8786), else a local cluster of `task_runner_workers` processes (one
  thread each) is started.
- ray: prefect-ray's RayTaskRunner; `task_runner_address` is the Ray address (ray://...).
Dask and Ray are optional extras (see docs/OPERATIONS.md); nothing here schedules by itself.
"""

from __future__ import annotations

from typing import Any

from anyprec.config import PipelineConfig

INSTALL = {"dask": "pip install prefect-dask", "ray": "pip install prefect-ray"}
THREAD_WORKERS = 4  # the thread runner's pool; mapped stages may run fewer at once (memory)


def make_task_runner(pipeline: PipelineConfig) -> Any:
    """The Prefect task runner named by pipeline.task_runner (errors say what to install)."""
    kind, address = pipeline.task_runner, pipeline.task_runner_address
    if kind == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=THREAD_WORKERS)
    try:
        if kind == "dask":
            from prefect_dask import DaskTaskRunner

            if address:
                return DaskTaskRunner(address=address)
            workers = pipeline.task_runner_workers
            local = {"n_workers": workers, "threads_per_worker": 1, "processes": True} if workers else {}
            return DaskTaskRunner(cluster_kwargs=local)
        from prefect_ray import RayTaskRunner

        return RayTaskRunner(address=address) if address else RayTaskRunner()
    except ImportError:
        raise ImportError(
            f"params.yaml pipeline.task_runner={kind!r} needs its Prefect integration: "
            f"{INSTALL[kind]} (or set pipeline.task_runner: thread)"
        ) from None
