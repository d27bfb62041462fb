"""Calibration shards of the sensitivity pass and per-layer clustering are mapped as separate task
runs: on a real local Dask cluster (2 worker processes) they run in the workers, not in the flow's
process, and the Fisher files and the artifact are byte-identical to the thread runner's and to the
CLI path's (`quantize_model`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prefect import flow

from anyprec import stages
from anyprec.config import CalibrationConfig, QuantizationConfig
from anyprec.flows.quantize_eval import quantize_stages
from anyprec.flows.runners import make_task_runner
from anyprec.packed import read_manifest
from anyprec.quantize import quantize_model
from anyprec.sensitivity import LAYER_GLOB
from anyprec.tasks.layout import Layout, require_model
from anyprec.tasks.quantize import resolve_base_model

from tests.flows.conftest import tiny_params, write_params

pytest.importorskip("prefect_dask")
SHARDS = 2


@flow(name="quantize-only")
def quantize_only(params_file: str) -> tuple[str, list[dict]]:
    layout = Layout.from_file(params_file)
    base = resolve_base_model("tiny", require_model(layout, "tiny"))
    runs: list = []
    done = quantize_stages(layout, base, runs)
    return done[stages.PACKED].path, [run.model_dump() for run in runs]


def _run(root: Path, model_dir: Path, runner: str, monkeypatch) -> tuple[Path, list[dict]]:
    root.mkdir(parents=True)
    monkeypatch.setenv("ANYPREC_CACHE", str(root / "cache"))  # no Fisher shared between the runs
    params = tiny_params(model_dir)
    params["pipeline"].update(task_runner=runner, task_runner_workers=2)
    params["quantization"].update(sensitivity_shards=SHARDS)
    path = write_params(root, params)
    task_runner = make_task_runner(Layout.from_file(path).params.pipeline)
    artifact, runs = quantize_only.with_options(task_runner=task_runner)(str(path))
    return Path(artifact), runs


def _same_files(a: Path, b: Path, pattern: str) -> None:
    names = sorted(p.name for p in a.glob(pattern))
    assert names and names == sorted(p.name for p in b.glob(pattern))
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_dask_workers_run_shards_and_layers_and_write_the_same_bytes(prefect_harness, tiny_model_dir, tmp_path,
                                                                     monkeypatch):
    thread_art, thread_runs = _run(tmp_path / "thread", tiny_model_dir, "thread", monkeypatch)
    dask_art, dask_runs = _run(tmp_path / "dask", tiny_model_dir, "dask", monkeypatch)
    expected = sorted([("shard", "sensitivity", s) for s in range(SHARDS)]
                      + [("layer", stage, layer) for stage in ("seed", "nested") for layer in range(2)])
    for runs in (thread_runs, dask_runs):
        assert sorted((r["unit"], r["stage"], r["index"]) for r in runs) == expected
    assert {r["pid"] for r in thread_runs} == {os.getpid()}
    assert os.getpid() not in {r["pid"] for r in dask_runs}, "a shard or layer ran in the flow's process"
    _same_files(thread_art.parent / stages.SENSITIVITY, dask_art.parent / stages.SENSITIVITY, LAYER_GLOB)
    files = read_manifest(thread_art)["files"]
    assert files == read_manifest(dask_art)["files"]
    _same_files(thread_art, dask_art, "*")
    # the CLI path: the same reduction order, so the same Fisher bytes and artifact data
    monkeypatch.setenv("ANYPREC_CACHE", str(tmp_path / "cli-cache"))
    params = tiny_params(tiny_model_dir)
    calib = CalibrationConfig(**params["calibration"])
    quant = QuantizationConfig(**params["quantization"], sensitivity_shards=SHARDS)
    cli_art = quantize_model(str(tiny_model_dir), tmp_path / "cli" / "packed", calib, quant,
                             work_dir=tmp_path / "cli" / "work", progress=False)
    _same_files(thread_art.parent / stages.SENSITIVITY, tmp_path / "cli" / "work" / stages.SENSITIVITY, LAYER_GLOB)
    assert {n: f["sha256"] for n, f in read_manifest(cli_art)["files"].items()} == \
        {n: f["sha256"] for n, f in files.items()}
