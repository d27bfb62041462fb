"""Diagonal Fisher: per-sequence squared gradients, fp32, [out, in]; per-layer files."""

from __future__ import annotations

import logging

import pytest
import torch

from anyprec.archs import get_weight, is_conv1d, quantizable_modules
from anyprec.sensitivity import compute_sensitivity, load_sensitivity, save_sensitivity


def _calib(vocab: int, n: int = 3, length: int = 12, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, length), generator=generator, dtype=torch.int64)


def _brute_force_fisher(model, ids, names) -> dict[str, torch.Tensor]:
    """sum_i (dL_i/dW)^2 with L_i from HF's own loss (labels=ids), [out, in] layout."""
    weights = [model.get_submodule(n).weight for n in names]
    flags = [w.requires_grad for w in weights]
    for w in weights:
        w.requires_grad_(True)
    total = {n: 0.0 for n in names}
    for row in ids:
        loss = model(input_ids=row[None], labels=row[None]).loss
        grads = torch.autograd.grad(loss, weights)
        for n, g in zip(names, grads):
            total[n] = total[n] + g.double() ** 2
    for w, flag in zip(weights, flags):
        w.requires_grad_(flag)
    return {n: (t.T if is_conv1d(model.get_submodule(n)) else t).float() for n, t in total.items()}


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_fisher_matches_brute_force(fixture, request):
    model, _ = request.getfixturevalue(fixture)
    ids = _calib(model.config.vocab_size)
    names = quantizable_modules(model)
    fisher = compute_sensitivity(model, ids, progress=False)
    expected = _brute_force_fisher(model, ids, names)
    assert list(fisher) == names
    for name in names:
        assert fisher[name].dtype == torch.float32
        assert fisher[name].shape == get_weight(model.get_submodule(name)).shape
        torch.testing.assert_close(fisher[name], expected[name], rtol=1e-4, atol=1e-12)


def test_fisher_squares_per_sequence_not_per_batch(tiny_llama):
    """Squaring the summed gradient would give a different (wrong) answer."""
    model, _ = tiny_llama
    ids = _calib(model.config.vocab_size, n=2)
    name = quantizable_modules(model)[0]
    fisher = compute_sensitivity(model, ids, modules=[name], progress=False)
    weight = model.get_submodule(name).weight
    weight.requires_grad_(True)
    summed = sum(torch.autograd.grad(model(input_ids=r[None], labels=r[None]).loss, weight)[0] for r in ids)
    weight.requires_grad_(False)
    assert not torch.allclose(fisher[name], summed**2, rtol=1e-3)


def test_model_state_is_restored(tiny_llama):
    model, _ = tiny_llama
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    names = quantizable_modules(model)[:2]
    fisher = compute_sensitivity(model, _calib(model.config.vocab_size, n=1), modules=names, progress=False)
    assert list(fisher) == names
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert all(p.grad is None for p in model.parameters())
    assert not model.training


def test_progress_reaches_the_log_about_ten_times_and_ends_at_the_total(tiny_llama, caplog):
    model, _ = tiny_llama
    ids = _calib(model.config.vocab_size, n=23, length=6)
    with caplog.at_level(logging.INFO, logger="anyprec.sensitivity"):
        compute_sensitivity(model, ids, progress=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "anyprec.sensitivity"]
    done = [int(line.split()[1]) for line in lines]
    assert 5 <= len(lines) <= 12, lines
    assert done == sorted(done) and done[-1] == 23 and all(" of 23 sequences" in line for line in lines)


def test_rejects_non_int64_ids(tiny_llama):
    model, _ = tiny_llama
    with pytest.raises(ValueError, match="int64"):
        compute_sensitivity(model, torch.zeros(2, 8, dtype=torch.int32), progress=False)


def test_save_and_load_per_layer(tiny_gpt2, tmp_path):
    model, _ = tiny_gpt2
    fisher = compute_sensitivity(model, _calib(model.config.vocab_size, n=1), progress=False)
    paths = save_sensitivity(fisher, tmp_path / "sens")
    assert [p.name for p in paths] == ["layer_000.safetensors", "layer_001.safetensors"]
    assert sorted(p.name for p in (tmp_path / "sens").iterdir()) == [p.name for p in paths]
    loaded = load_sensitivity(tmp_path / "sens", list(fisher))
    assert list(loaded) == list(fisher)
    for name in fisher:
        assert torch.equal(loaded[name], fisher[name])
    subset = [n for n in fisher if ".1." in n]
    assert list(load_sensitivity(tmp_path / "sens", subset)) == subset


def test_load_reports_missing_file_and_module(tiny_gpt2, tmp_path):
    model, _ = tiny_gpt2
    names = quantizable_modules(model)
    save_sensitivity({names[0]: torch.ones(2, 2)}, tmp_path)
    with pytest.raises(FileNotFoundError, match="layer_001"):
        load_sensitivity(tmp_path, [names[-1]])
    with pytest.raises(KeyError, match="c_proj"):
        load_sensitivity(tmp_path, [names[1]])
