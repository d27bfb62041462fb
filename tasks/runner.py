"""Run a cached stage task: pick the per-params result store and refresh stale cache entries."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from prefect import Task

from anyprec.tasks.caching import StageOutput, is_current, stage_key, write_stamp
from anyprec.tasks.layout import Layout

R = TypeVar("R")


def _prepared(task: Task[..., R], layout: Layout, out: Path, params: dict[str, Any]) -> tuple[Task[..., R], str]:
    """The task bound to layout's result storage; refresh_cache when `out` is not current."""
    key = stage_key(task.name, task.version, params)
    fresh = is_current(layout.results_dir, out, key)
    bound = task.with_options(result_storage=layout.results_dir, refresh_cache=not fresh)
    return bound, key


def _rebind(result: R, out: Path) -> R:
    # A result record may come from before the checkout moved: the path is the layout's.
    if isinstance(result, StageOutput):
        return result.model_copy(update={"path": str(out)})  # type: ignore[return-value]
    return result


def is_fresh(task: Task, layout: Layout, out: Path, **params: Any) -> bool:
    """Whether `out` already holds `task`'s result for these inputs (run_stage will not recompute)."""
    return is_current(layout.results_dir, out, stage_key(task.name, task.version, params))


def run_stage(task: Task[..., R], layout: Layout, out: Path, **params: Any) -> R:
    """Call a stage task writing to `out` (cached on its inputs' content) and stamp the output."""
    bound, key = _prepared(task, layout, out, params)
    result = bound(out=str(out), **params)
    write_stamp(layout.results_dir, out, key)
    return _rebind(result, out)
