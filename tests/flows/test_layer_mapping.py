"""Per-layer clustering is mapped over decoder layers as separate task runs: on a real local
Dask cluster (2 worker processes) the layers run in the workers, not in the flow's process,
and the artifact is byte-identical to the thread runner's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prefect import flow

from anyprec import stages
from anyprec.flows.quantize_eval import quantize_stages
from anyprec.flows.runners import make_task_runner
from anyprec.packed import read_manifest
from anyprec.tasks.layout import Layout, require_model
from anyprec.tasks.quantize import resolve_base_model

from tests.flows.conftest import tiny_params, write_params

pytest.importorskip("prefect_dask")


@flow(name="quantize-only")
def quantize_only(params_file: str) -> tuple[str, list[dict]]:
    layout = Layout.from_file(params_file)
    base = resolve_base_model("tiny", require_model(layout, "tiny"))
    runs: list = []
    done = quantize_stages(layout, base, runs)
    return done[stages.PACKED].path, [run.model_dump() for run in runs]


def _run(root: Path, model_dir: Path, runner: str) -> tuple[Path, list[dict]]:
    root.mkdir(parents=True)
    params = tiny_params(model_dir)
    params["pipeline"].update(task_runner=runner, task_runner_workers=2)
    path = write_params(root, params)
    task_runner = make_task_runner(Layout.from_file(path).params.pipeline)
    artifact, runs = quantize_only.with_options(task_runner=task_runner)(str(path))
    return Path(artifact), runs


def test_dask_workers_run_the_layers_and_write_the_same_artifact(prefect_harness, tiny_model_dir, tmp_path):
    thread_art, thread_runs = _run(tmp_path / "thread", tiny_model_dir, "thread")
    dask_art, dask_runs = _run(tmp_path / "dask", tiny_model_dir, "dask")
    expected = sorted((stage, layer) for stage in ("seed", "nested") for layer in range(2))
    for runs in (thread_runs, dask_runs):
        assert sorted((r["stage"], r["layer"]) for r in runs) == expected
    assert {r["pid"] for r in thread_runs} == {os.getpid()}
    assert os.getpid() not in {r["pid"] for r in dask_runs}, "a layer ran in the flow's process, not a worker"
    files = read_manifest(thread_art)["files"]
    assert files == read_manifest(dask_art)["files"]
    for name in files:
        assert (thread_art / name).read_bytes() == (dask_art / name).read_bytes(), name
