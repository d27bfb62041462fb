"""Baseline quantization per bit-width and swapping dequantized weights in and out."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from anyprec import archs
from anyprec.evaluation import baselines as bl


def _fisher(model, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.rand(archs.get_weight(model.get_submodule(n)).shape, generator=gen)
            for n in archs.quantizable_modules(model)}


def test_dequantize_reads_lut_per_row():
    codes = np.array([[0, 3, 1], [2, 2, 0]], dtype=np.uint8)
    lut = np.array([[-1.0, 0.0, 1.0, 2.0], [10.0, 20.0, 30.0, 40.0]], dtype=np.float32)
    np.testing.assert_array_equal(bl.dequantize(codes, lut), [[-1.0, 2.0, 0.0], [30.0, 30.0, 10.0]])
    with pytest.raises(ValueError, match="out of range"):
        bl.dequantize(codes + 4, lut)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_apply_then_restore_is_exact(fixture, request):
    base, _ = request.getfixturevalue(fixture)
    model = copy.deepcopy(base)
    names = archs.quantizable_modules(model)
    before = {n: archs.get_weight(model.get_submodule(n)) for n in names}
    result = bl.quantize_method(model, _fisher(model), "rtn", [3], progress=False)
    x = torch.randn(2, 5, model.config.hidden_size if fixture == "tiny_llama" else model.config.n_embd)
    name = names[0]  # an attention input projection: in_features = hidden size
    module = model.get_submodule(name)
    with bl.quantized_weights(model, result.codes[3]):
        dense = torch.from_numpy(bl.dequantize(*result.codes[3][name]))
        torch.testing.assert_close(archs.get_weight(module), dense)
        bias = getattr(module, "bias", None)
        expected = x @ dense.T + (bias if bias is not None else 0)
        torch.testing.assert_close(module(x), expected, rtol=1e-5, atol=1e-5)
    for n in names:
        assert torch.equal(archs.get_weight(model.get_submodule(n)), before[n])


def test_apply_restores_on_error(tiny_llama):
    model = copy.deepcopy(tiny_llama[0])
    names = archs.quantizable_modules(model)
    before = archs.get_weight(model.get_submodule(names[0]))
    good = bl.quantize_method(model, _fisher(model), "rtn", [3], progress=False).codes[3]
    bad = {names[0]: good[names[0]], names[1]: (good[names[1]][0][:, :3], good[names[1]][1])}
    with pytest.raises(ValueError):
        bl.apply_quantized_weights(model, bad)
    assert torch.equal(archs.get_weight(model.get_submodule(names[0])), before)


def test_methods_objectives_and_nesting(tiny_llama):
    model, _ = tiny_llama
    fisher = _fisher(model)
    bits = [3, 4, 6]
    res = {m: bl.quantize_method(model, fisher, m, bits, seed_bits=3, parent_bits=6, progress=False)
           for m in ("rtn", "dedicated", "dedicated-optimal", "reference", "ours")}
    for b in bits:
        # The exact clustering at b bits is optimal: nothing beats it on the objective.
        for m in ("rtn", "dedicated", "reference", "ours"):
            assert res["dedicated-optimal"].total_objective(b) <= res[m].total_objective(b) * (1 + 1e-9)
        assert set(res["ours"].objective[b]) == set(fisher)
    # At the seed width ours is the optimal clustering itself, and the reference's seed is
    # SqueezeLLM's weighted Lloyd, i.e. the dedicated baseline at that width.
    assert res["ours"].total_objective(3) == pytest.approx(res["dedicated-optimal"].total_objective(3), rel=1e-9)
    assert res["reference"].total_objective(3) == pytest.approx(res["dedicated"].total_objective(3), rel=1e-9)
    assert res["ours"].total_objective(3) < res["reference"].total_objective(3)
    name = next(iter(fisher))
    parent, _ = res["ours"].codes[6][name]
    for b in (3, 4):
        np.testing.assert_array_equal(res["ours"].codes[b][name][0], parent >> (6 - b))


def test_base_is_not_a_quantization_method(tiny_llama):
    with pytest.raises(ValueError, match="not quantized"):
        bl.quantize_method(tiny_llama[0], _fisher(tiny_llama[0]), "base", [3], progress=False)
    with pytest.raises(ValueError, match="nested range"):
        bl.quantize_method(tiny_llama[0], _fisher(tiny_llama[0]), "ours", [2], progress=False)


@pytest.mark.slow  # numba compiles flash1dkmeans on first use: minutes on a busy 2-core machine
def test_flash1dkmeans_crosscheck_of_the_lloyd_baseline():
    """flash1dkmeans (the paper's implementation's k-means) and our Lloyd land close; optimal beats both."""
    pytest.importorskip("flash1dkmeans")
    from anyprec.clustering import ClusterMethod, quantize_seed, weighted_objective

    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 96)).astype(np.float32)
    weights = rng.random((6, 96))
    objective = {}
    for name, (codes, lut) in {
        "flash": bl.flash1dkmeans_seed(w, weights, 3),
        "lloyd": quantize_seed(w, weights, 3, ClusterMethod.LLOYD),
        "optimal": quantize_seed(w, weights, 3, ClusterMethod.OPTIMAL),
    }.items():
        assert np.all(np.diff(lut, axis=1) >= 0)
        objective[name] = weighted_objective(w, weights, codes, lut).sum()
    assert objective["optimal"] <= min(objective["flash"], objective["lloyd"]) * (1 + 1e-9)
    assert objective["lloyd"] == pytest.approx(objective["flash"], rel=0.1)


def test_quantization_cache_reuses_only_matching_results(tiny_llama, tmp_path):
    model, _ = tiny_llama
    fisher = _fisher(model)
    first = bl.quantize_method(model, fisher, "reference", [3, 5], progress=False, cache=tmp_path, cache_key="k1")
    files = sorted((tmp_path / "reference").glob("*.safetensors"))
    assert len(files) == len(fisher)
    # A cached result is returned as stored, even though this Fisher differs (same key).
    other = _fisher(model, seed=1)
    again = bl.quantize_method(model, other, "reference", [5, 3], progress=False, cache=tmp_path, cache_key="k1")
    name = next(iter(fisher))
    for b in (3, 5):
        np.testing.assert_array_equal(again.codes[b][name][0], first.codes[b][name][0])
        assert again.objective[b] == first.objective[b]
    fresh = bl.quantize_method(model, other, "reference", [3], progress=False, cache=tmp_path, cache_key="k2")
    direct = bl.quantize_method(model, other, "reference", [3], progress=False)
    assert fresh.objective[3] == direct.objective[3] != first.objective[3]
    wider = bl.quantize_method(model, fisher, "reference", [3, 4], progress=False, cache=tmp_path, cache_key="k2")
    assert set(wider.codes) == {3, 4}


def test_cache_adds_missing_widths_and_keeps_the_stored_ones(tiny_llama, tmp_path):
    from safetensors import safe_open

    model, _ = tiny_llama
    fisher, other = _fisher(model), _fisher(model, seed=1)
    first = bl.quantize_method(model, fisher, "dedicated", [3, 4], progress=False, cache=tmp_path, cache_key="k")
    # Asking for another width quantizes only that one (from this call's Fisher) ...
    more = bl.quantize_method(model, other, "dedicated", [5], progress=False, cache=tmp_path, cache_key="k")
    direct = bl.quantize_method(model, other, "dedicated", [5], progress=False)
    assert more.objective[5] == direct.objective[5]
    # ... and the file keeps the widths it held: 3 and 4 come back as first stored.
    name = next(iter(fisher))
    with safe_open(str(tmp_path / "dedicated" / f"{name}.safetensors"), framework="np") as handle:
        assert {k for k in handle.keys() if k.startswith("codes")} == {"codes3", "codes4", "codes5"}
    again = bl.quantize_method(model, other, "dedicated", [4, 5, 3], progress=False, cache=tmp_path, cache_key="k")
    for b in (3, 4):
        np.testing.assert_array_equal(again.codes[b][name][0], first.codes[b][name][0])
        assert again.objective[b] == first.objective[b]
    assert again.objective[5] == more.objective[5]
