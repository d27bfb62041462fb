"""The sensitivity pass over calibration shards: the fixed reduction order gives the same bits
whatever order the shards ran in; one shard gives the unsharded pass's bits."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from anyprec.archs import quantizable_modules
from anyprec.fileio import write_json_atomic
from anyprec.quantize import CALIB_FILE, CALIB_META, SENS_META, run_sensitivity, run_sensitivity_shard
from anyprec.sensitivity import LAYER_GLOB, compute_sensitivity, load_sensitivity
from anyprec.sensitivity_shards import SHARD_DIR, shard_bounds
from tests.conftest import TINY_VOCAB


@pytest.fixture()
def calib(tmp_path):
    ids = torch.randint(0, TINY_VOCAB, (7, 16), generator=torch.Generator().manual_seed(3))
    folder = tmp_path / "calib"
    folder.mkdir()
    save_file({"input_ids": ids}, str(folder / CALIB_FILE))
    write_json_atomic(folder / CALIB_META, {"sha256": "shard-test-calibration"})
    return folder, ids


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ANYPREC_CACHE", str(tmp_path / "cache"))


def test_shard_bounds_cover_the_rows_in_near_equal_contiguous_parts():
    assert shard_bounds(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert shard_bounds(4, 1) == [(0, 4)]
    with pytest.raises(ValueError, match="sensitivity_shards=5"):
        shard_bounds(4, 5)


def _fisher(folder) -> dict[str, torch.Tensor]:
    names = json.loads((folder / SENS_META).read_text())["modules"]
    return load_sensitivity(folder, names)


def test_one_shard_gives_the_unsharded_bits(tiny_llama, tiny_model_dir, calib):
    model, _ = tiny_llama
    folder, ids = calib
    out = run_sensitivity(str(tiny_model_dir), folder, folder.parent / "one", progress=False, mode="whole")
    expected = compute_sensitivity(model, ids, quantizable_modules(model), progress=False)
    got = _fisher(out)
    assert list(got) == list(expected)
    assert all(torch.equal(got[n], expected[n]) for n in expected)
    assert not list(out.glob("shard_*")), "shard folders are removed once the Fisher is written"


@pytest.mark.parametrize("mode", ["whole", "streamed"])
def test_shards_in_any_order_give_the_same_bytes(tiny_llama, tiny_model_dir, calib, mode, monkeypatch):
    model, _ = tiny_llama
    folder, ids = calib
    forward = run_sensitivity(str(tiny_model_dir), folder, folder.parent / "forward", progress=False, mode=mode,
                              shards=3)
    monkeypatch.setenv("ANYPREC_CACHE", str(folder.parent / "other-cache"))  # compute again, not link
    backward = folder.parent / "backward"
    for index in (2, 0, 1):  # as separate workers might finish them
        run_sensitivity_shard(str(tiny_model_dir), folder, backward, index, mode=mode, shards=3)
    assert sorted(p.name for p in backward.iterdir()) == [SHARD_DIR.format(i) for i in range(3)]
    run_sensitivity(str(tiny_model_dir), folder, backward, progress=False, mode=mode, shards=3)
    files = sorted(p.name for p in forward.glob(LAYER_GLOB))
    assert files and files == sorted(p.name for p in backward.glob(LAYER_GLOB))
    for name in files:
        assert (forward / name).read_bytes() == (backward / name).read_bytes(), name
    assert (forward / SENS_META).read_text() == (backward / SENS_META).read_text()
    # the sum in the fixed order of the per-shard Fishers, and the unsharded Fisher to fp32 rounding
    names = quantizable_modules(model)
    parts = [compute_sensitivity(model, ids[a:b], names, progress=False) for a, b in shard_bounds(len(ids), 3)]
    whole = compute_sensitivity(model, ids, names, progress=False)
    got = _fisher(forward)
    for name in names:
        if mode == "whole":
            assert torch.equal(got[name], torch.zeros_like(parts[0][name]) + parts[0][name] + parts[1][name]
                               + parts[2][name])
        torch.testing.assert_close(got[name], whole[name], rtol=1e-5, atol=1e-12)


def test_more_shards_is_another_key_and_a_killed_reduction_resumes(tiny_model_dir, calib, monkeypatch):
    import anyprec.sensitivity_shards as shards

    folder, _ = calib
    one = run_sensitivity(str(tiny_model_dir), folder, folder.parent / "one", progress=False, mode="whole")
    out = folder.parent / "two"
    real = shards._sum_layer
    calls = {"n": 0}

    def dies_on_second_layer(paths):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(paths)

    monkeypatch.setattr(shards, "_sum_layer", dies_on_second_layer)
    with pytest.raises(KeyboardInterrupt):
        run_sensitivity(str(tiny_model_dir), folder, out, progress=False, mode="whole", shards=2)
    assert not (out / SENS_META).exists() and len(list(out.glob(LAYER_GLOB))) == 1
    monkeypatch.setattr(shards.sensitivity, "compute_sensitivity",
                        lambda *a, **k: pytest.fail("a finished shard was recomputed"))
    calls["n"] = 10
    run_sensitivity(str(tiny_model_dir), folder, out, progress=False, mode="whole", shards=2)
    assert calls["n"] == 11, "only the layer not yet reduced is summed again"
    assert json.loads((out / SENS_META).read_text())["key"] != json.loads((one / SENS_META).read_text())["key"]
