"""Per-layer weight source: the same tensors the whole loaded model holds, without loading it."""

from __future__ import annotations

import pytest
import torch

import anyprec.models as models
from anyprec import archs
from anyprec.layer_weights import ModelWeights
from tests.anyprec.test_streamed_sensitivity import BUILDERS
from tests.conftest import save_model_dir


@pytest.mark.parametrize("kind", ["llama", "gpt2", "llama_tied", "opt"])
def test_layer_weights_and_dense_equal_the_loaded_model(kind, tiny_tokenizer, tmp_path):
    model_dir = save_model_dir(BUILDERS[kind](), tiny_tokenizer, tmp_path / "model")
    whole, _ = models.load_model(model_dir)
    source = ModelWeights(model_dir)
    assert source.reader is not None, "the safetensors should be read lazily"
    assert source.groups == archs.layer_groups(whole)
    for names in source.groups:
        got = source.weights(names)
        for name in names:
            assert torch.equal(got[name], archs.get_weight(whole.get_submodule(name))), name
    quantized = {f"{n}.weight" for group in source.groups for n in group}
    expected = {k: v for k, v in whole.state_dict().items() if k not in quantized}
    dense = source.dense_state()
    assert list(dense) == list(expected)
    assert all(torch.equal(dense[k], v) for k, v in expected.items())
    if kind == "llama_tied":  # the alias is the same tensor object, as in the loaded model
        assert dense["lm_head.weight"] is dense["model.embed_tokens.weight"]


def test_stages_after_sensitivity_never_load_the_whole_model(tiny_quantized, tiny_model_dir, tmp_path,
                                                             monkeypatch):
    """Seed, upscaling (with its objective) and packing from per-layer reads give the same artifact."""
    from anyprec.config import QuantizationConfig
    from anyprec.packed import load_packed_tensors, read_manifest
    from anyprec.quantize import run_packing, run_seed_quantization, run_upscaling

    artifact, work = tiny_quantized

    def refuse(*args, **kwargs):
        raise AssertionError("load_model called: the whole model was loaded")

    monkeypatch.setattr(models, "load_model", refuse)
    quant, ref = QuantizationConfig(), str(tiny_model_dir)
    seed = run_seed_quantization(ref, work / "sensitivity", quant, tmp_path / "seed", progress=False)
    nested = run_upscaling(ref, work / "sensitivity", seed, quant, tmp_path / "nested", progress=False)
    inputs = read_manifest(artifact)["inputs"]
    out = run_packing(ref, nested, quant, tmp_path / "packed", inputs)
    assert read_manifest(out)["files"] == read_manifest(artifact)["files"]
    _, modules, _ = load_packed_tensors(out)
    assert modules.keys() == load_packed_tensors(artifact)[1].keys()
