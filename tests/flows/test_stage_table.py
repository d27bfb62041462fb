"""A stage declared once in anyprec.stages.STAGES reaches the CLI's quantize, the flow and dvc.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anyprec import stages
from anyprec.tasks.layout import Layout


def _marker(run: stages.StageRun) -> Path:
    """The dummy stage: records which inputs and settings it was handed."""
    run.out.mkdir(parents=True, exist_ok=True)
    seen = {"inputs": {k: str(v) for k, v in run.inputs.items()}, "seed_bits": run.settings["quantization"].seed_bits}
    (run.out / "marker.json").write_text(json.dumps(seen))
    return run.out


DUMMY = stages.StageSpec("dummy", _marker, inputs=(stages.NESTED,), params=("quantization.seed_bits",),
                         code=("anyprec/stages.py",))


@pytest.fixture()
def with_dummy(monkeypatch):
    table = list(stages.STAGES)
    table.insert(len(table) - 1, DUMMY)  # before packing, after the stage it reads
    monkeypatch.setattr(stages, "STAGES", table)


def test_cli_quantize_runs_the_added_stage(with_dummy, tiny_model_dir, tmp_path):
    from anyprec.cli import main

    work = tmp_path / "work"
    main(["quantize", str(tiny_model_dir), "--out", str(tmp_path / "packed"), "--work-dir", str(work),
          "--samples", "4", "--seq-len", "32", "--parent-bits", "4"])
    seen = json.loads((work / "dummy" / "marker.json").read_text())
    assert seen == {"inputs": {"nested": str(work / "nested")}, "seed_bits": 3}
    assert (tmp_path / "packed" / "manifest.json").is_file()


def test_flow_stage_cli_and_dvc_yaml_see_the_added_stage(with_dummy, prefect_harness, own_pipeline_root):
    from prefect import flow

    from anyprec.flows.quantize_eval import quantize_stages
    from anyprec.tasks import stage_cli
    from anyprec.tasks.dvc_yaml import render_stages
    from anyprec.tasks.quantize import resolve_base_model

    layout = Layout.from_file(own_pipeline_root / "params.yaml")
    model_dir = layout.model_location("tiny")

    @flow
    def only_quantize() -> dict:
        return quantize_stages(layout, resolve_base_model("tiny", model_dir))

    done = only_quantize()
    assert list(done) == [spec.name for spec in stages.STAGES]
    marker = layout.stage_path("tiny", "dummy") / "marker.json"
    assert json.loads(marker.read_text())["inputs"] == {"nested": str(layout.stage_path("tiny", "nested"))}

    marker.unlink()
    stage_cli.main(["dummy", "--model", "tiny", "--params", str(layout.params_file)])
    assert marker.is_file()

    rendered = render_stages()["dummy"]["do"]
    assert rendered["cmd"] == "python -m anyprec.tasks.stage_cli dummy --model ${item}"
    assert "${pipeline.artifacts_dir}/${item}/nested" in rendered["deps"]
    assert rendered["params"] == ["models.${item}", "quantization.seed_bits"]
    assert list(rendered["outs"][0]) == ["${pipeline.artifacts_dir}/${item}/dummy"]
