"""Stage pipeline: per-layer resume after a kill, and recomputation when inputs change."""

from __future__ import annotations

import shutil

import pytest
from safetensors.torch import load_file

import anyprec.clustering as clustering
from anyprec.config import QuantizationConfig
from anyprec.quantize import LAYER_FILE, run_seed_quantization, run_upscaling


@pytest.fixture()
def work_copy(tiny_quantized, tmp_path):
    _, work = tiny_quantized
    dst = tmp_path / "work"
    shutil.copytree(work, dst)
    return dst


def test_killed_upscaling_resumes_where_it_stopped(tiny_model_dir, work_copy, monkeypatch):
    quant = QuantizationConfig()
    nested = work_copy / "nested-new"
    real_upscale = clustering.upscale
    calls = {"n": 0}

    def dying_upscale(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:  # first module of the second decoder layer
            raise KeyboardInterrupt("simulated kill")
        return real_upscale(*args, **kwargs)

    monkeypatch.setattr(clustering, "upscale", dying_upscale)
    with pytest.raises(KeyboardInterrupt):
        run_upscaling(str(tiny_model_dir), work_copy / "sensitivity", work_copy / "seed",
                      quant, nested, progress=False)
    first = nested / LAYER_FILE.format(0)
    assert [p.name for p in nested.iterdir()] == [first.name]  # no second layer, no temp file left
    stamp = first.stat().st_mtime_ns

    monkeypatch.setattr(clustering, "upscale", real_upscale)
    calls["n"] = 0
    run_upscaling(str(tiny_model_dir), work_copy / "sensitivity", work_copy / "seed",
                  quant, nested, progress=False)
    assert first.stat().st_mtime_ns == stamp, "a finished layer was recomputed"
    reference = load_file(str(work_copy / "nested" / LAYER_FILE.format(1)))
    resumed = load_file(str(nested / LAYER_FILE.format(1)))
    assert reference.keys() == resumed.keys()
    assert all((reference[k] == resumed[k]).all() for k in reference)


def test_changed_method_recomputes_layers(tiny_model_dir, work_copy):
    seed_dir = work_copy / "seed"
    before = (seed_dir / LAYER_FILE.format(0)).stat().st_mtime_ns
    run_seed_quantization(str(tiny_model_dir), work_copy / "sensitivity", QuantizationConfig(), seed_dir, progress=False)
    assert (seed_dir / LAYER_FILE.format(0)).stat().st_mtime_ns == before
    run_seed_quantization(str(tiny_model_dir), work_copy / "sensitivity", QuantizationConfig(method="lloyd"),
                          seed_dir, progress=False)
    assert (seed_dir / LAYER_FILE.format(0)).stat().st_mtime_ns != before


def test_torn_layer_file_is_redone(tiny_model_dir, work_copy):
    seed_dir = work_copy / "seed"
    target = seed_dir / LAYER_FILE.format(1)
    target.write_bytes(target.read_bytes()[:100])
    run_seed_quantization(str(tiny_model_dir), work_copy / "sensitivity", QuantizationConfig(), seed_dir, progress=False)
    assert "model.layers.1.mlp.down_proj.codes" in load_file(str(target))


def test_sensitivity_is_shared_by_content_across_output_dirs(tiny_model_dir, work_copy, tmp_path, monkeypatch):
    import anyprec.sensitivity as sensitivity
    from anyprec.quantize import SENS_META, run_sensitivity

    monkeypatch.setenv("ANYPREC_CACHE", str(tmp_path / "cache"))
    first = run_sensitivity(str(tiny_model_dir), work_copy / "calib", tmp_path / "a", progress=False)

    def must_not_run(*args, **kwargs):
        raise AssertionError("sensitivity recomputed although the same inputs are cached")

    monkeypatch.setattr(sensitivity, "compute_sensitivity", must_not_run)
    second = run_sensitivity(str(tiny_model_dir), work_copy / "calib", tmp_path / "b", progress=False)
    assert (second / SENS_META).read_text() == (first / SENS_META).read_text()
    assert sorted(p.name for p in second.iterdir()) == sorted(p.name for p in first.iterdir())
