"""A stage re-run after an interruption keeps finished per-layer files and redoes only the rest."""

from __future__ import annotations

import shutil

from prefect import flow

from anyprec.tasks import quantize as q
from anyprec.tasks.caching import stamp_file
from anyprec.tasks.layout import Layout, Stage
from anyprec.tasks.runner import run_stage
from tests.flows.conftest import tiny_params, write_params


@flow
def seed_chain(params_file: str) -> None:
    layout = Layout.from_file(params_file)
    base = q.resolve_base_model("tiny", layout.model_location("tiny"))
    p = layout.params
    calib = run_stage(q.prepare_calibration, layout, layout.stage_path("tiny", Stage.CALIBRATION),
                      base=base, calibration=p.calibration)
    sens = run_stage(q.sensitivity, layout, layout.stage_path("tiny", Stage.SENSITIVITY), base=base, calib=calib)
    run_stage(q.seed_quantization, layout, layout.stage_path("tiny", Stage.SEED), base=base, sens=sens,
              quantization=p.quantization)


def test_killed_seed_stage_resumes_from_its_layer_files(prefect_harness, tmp_path, tiny_model_dir):
    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "tiny")
    params_file = write_params(tmp_path, tiny_params(model_dir))
    seed_chain(str(params_file))
    layout = Layout.from_file(params_file)
    seed_dir = layout.stage_path("tiny", Stage.SEED)
    layers = sorted(seed_dir.glob("layer_*.safetensors"))
    assert len(layers) == 2
    kept_mtime = layers[0].stat().st_mtime_ns
    layers[1].unlink()  # as if the run had been killed before the last layer
    seed_chain(str(params_file))
    assert layers[0].stat().st_mtime_ns == kept_mtime  # finished layer neither deleted nor redone
    assert layers[1].is_file()
    assert stamp_file(layout.results_dir, seed_dir).is_file()
