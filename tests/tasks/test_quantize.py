"""The quantization stages as Prefect tasks: named from the table, digests from content or inputs."""

from __future__ import annotations

import json
from pathlib import Path

from anyprec import stages
from anyprec.config import CalibrationConfig, ModelEntry, Params
from anyprec.models import hash_model_dir
from anyprec.tasks.caching import stage_key
from anyprec.tasks.pipeline import sections
from anyprec.tasks.quantize import resolve_base_model, run_spec, stage_task

SMALL = Params(models={"m": ModelEntry(path="embedded")},
               calibration=CalibrationConfig(corpus="news", n_samples=2, seq_len=16))


def _echo(run: stages.StageRun) -> Path:
    """A stage without a content digest: writes the settings it was handed."""
    run.out.mkdir(parents=True, exist_ok=True)
    (run.out / "seen.json").write_text(json.dumps({k: v.model_dump() for k, v in run.settings.items()}))
    return run.out


ECHO = stages.StageSpec("echo", _echo, params=("calibration.seed",))


def test_each_stage_task_is_named_and_versioned_from_the_table():
    for spec in stages.STAGES:
        task = stage_task(spec)
        assert (task.name, task.version) == (spec.name, spec.version)
        assert stage_task(spec) is task  # one task per stage, so Prefect sees one name


def test_base_model_is_resolved_and_hashed(tiny_model_dir):
    base = resolve_base_model.fn("tiny", str(tiny_model_dir))
    assert (base.name, base.location, base.sha256) == ("tiny", str(tiny_model_dir), hash_model_dir(tiny_model_dir))


def test_digest_is_the_content_digest_when_declared(tiny_model_dir, tmp_path):
    base = resolve_base_model.fn("tiny", str(tiny_model_dir))
    calib = stages.stage(stages.CALIB)
    done = run_spec(calib, base, {}, stages.settings_for(calib, sections(SMALL)), str(tmp_path / "calib"))
    assert done.stage == "calib" and done.digest == calib.digest(Path(done.path))


def test_digest_is_the_key_of_the_inputs_otherwise(tiny_model_dir, tmp_path):
    base = resolve_base_model.fn("tiny", str(tiny_model_dir))
    settings = stages.settings_for(ECHO, sections(SMALL))
    done = run_spec(ECHO, base, {}, settings, str(tmp_path / "echo"))
    assert json.loads((tmp_path / "echo" / "seen.json").read_text()) == {"calibration": SMALL.calibration.model_dump()}
    assert done.digest == stage_key("echo", ECHO.version, {"base": base, "upstream": {}, "settings": settings})
    other = {"calibration": SMALL.calibration.model_copy(update={"seed": 1})}
    assert run_spec(ECHO, base, {}, other, str(tmp_path / "echo2")).digest != done.digest
