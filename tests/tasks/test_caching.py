"""Cache keys come from content identities; stamps notice deleted or replaced outputs."""

from __future__ import annotations

import pytest

from anyprec.config import CalibrationConfig
from anyprec.tasks.caching import (
    BaseModelInfo, StageOutput, fingerprint, identity, is_current, stage_key, write_stamp,
)

BASE = BaseModelInfo(name="m", location="/somewhere/m", sha256="ab" * 32)


def test_key_ignores_locations_and_names_but_not_content():
    calib = CalibrationConfig(n_samples=4, seq_len=32)
    key = stage_key("calib", "1", {"base": BASE, "calibration": calib, "out": "/a"})
    moved = BASE.model_copy(update={"location": "/elsewhere", "name": "renamed"})
    assert key == stage_key("calib", "1", {"base": moved, "calibration": calib, "out": "/b"})
    changed = BASE.model_copy(update={"sha256": "cd" * 32})
    assert key != stage_key("calib", "1", {"base": changed, "calibration": calib, "out": "/a"})
    assert key != stage_key("calib", "1", {"base": BASE, "calibration": calib.model_copy(
        update={"seed": 1}), "out": "/a"})
    assert key != stage_key("calib", "2", {"base": BASE, "calibration": calib, "out": "/a"})


def test_stage_outputs_are_identified_by_digest_only():
    a = StageOutput(stage="calib", path="/x", digest="d1")
    assert identity(a) == identity(a.model_copy(update={"path": "/y"})) != identity(
        a.model_copy(update={"digest": "d2"}))


def test_unsupported_parameter_type_is_an_error():
    with pytest.raises(TypeError, match="cache identity"):
        identity(object())


def test_stamp_tracks_deletion_and_replacement(tmp_path):
    results, out = tmp_path / "results", tmp_path / "out"
    out.mkdir()
    (out / "layer_000.safetensors").write_bytes(b"x" * 10)
    assert fingerprint(tmp_path / "missing") is None
    write_stamp(results, out, "k1")
    assert is_current(results, out, "k1")
    assert not is_current(results, out, "k2")
    (out / "layer_000.safetensors").write_bytes(b"y" * 11)
    assert not is_current(results, out, "k1")
    write_stamp(results, out, "k1")
    (out / "layer_000.safetensors").unlink()
    assert not is_current(results, out, "k1")
