"""The stage table: well formed, one provenance record, one work-folder formula."""

from __future__ import annotations

import pytest

from anyprec import stages
from anyprec.config import CalibrationConfig, QuantizationConfig, config_hash


def test_table_is_ordered_and_names_are_unique():
    names = [spec.name for spec in stages.STAGES]
    assert names == ["calib", "sensitivity", "seed", "nested", "packed"]
    for index, spec in enumerate(stages.STAGES):
        assert set(spec.inputs) <= set(names[:index]), f"{spec.name} reads a later stage"
        assert spec.folder == spec.name
        assert set(spec.sections) <= {"calibration", "quantization"}


def test_unknown_stage_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown stage 'upscale'.*'nested'"):
        stages.stage("upscale")


def test_provenance_ref_is_loadable_and_keeps_the_registry_key(tiny_model_dir):
    calib, quant = CalibrationConfig(n_samples=4, seq_len=32), QuantizationConfig()
    local = stages.provenance(stages.BaseModelRef("tiny", str(tiny_model_dir), "abc"), calib, quant, "c" * 64)
    assert local["base_model_ref"] == str(tiny_model_dir.resolve()) and local["base_model_name"] == "tiny"
    assert local["params_sha256"] == config_hash(calib, quant) and local["calibration_sha256"] == "c" * 64
    embedded = stages.provenance(stages.BaseModelRef("smollm2-135m", "/cache/x", "abc"), calib, quant, "c")
    assert embedded["base_model_ref"] == "smollm2-135m"  # portable: every machine resolves the name


def test_work_dir_is_keyed_by_model_and_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("ANYPREC_CACHE", str(tmp_path))
    calib, quant = CalibrationConfig(), QuantizationConfig()
    first = stages.work_dir("a" * 64, calib, quant)
    assert first.parent == tmp_path / "work"
    assert first != stages.work_dir("b" * 64, calib, quant)
    assert first != stages.work_dir("a" * 64, calib, QuantizationConfig(parent_bits=6))
