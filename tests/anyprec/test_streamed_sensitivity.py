"""The layer-streamed Fisher equals the whole-model Fisher, on every tested architecture."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from anyprec.archs import quantizable_modules
from anyprec.sensitivity import compute_sensitivity, load_sensitivity
from anyprec.streamed_sensitivity import (
    STREAMED_ARCHS,
    compute_streamed_sensitivity,
    streaming_unsupported,
    use_streamed,
)
from tests.conftest import TINY_VOCAB, make_tiny_gpt2, make_tiny_llama, save_model_dir


def _tiny(config_name: str, model_name: str, **kwargs):
    import transformers

    torch.manual_seed(0)
    config = getattr(transformers, config_name)(vocab_size=TINY_VOCAB, **kwargs)
    return getattr(transformers, model_name)(config).eval()


LLAMA_SHAPE = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                   num_key_value_heads=2)
BUILDERS = {
    "llama": make_tiny_llama,
    "gpt2": make_tiny_gpt2,
    "llama_tied": lambda: _tiny("LlamaConfig", "LlamaForCausalLM", tie_word_embeddings=True, **LLAMA_SHAPE),
    "mistral": lambda: _tiny("MistralConfig", "MistralForCausalLM", **LLAMA_SHAPE),
    "qwen2": lambda: _tiny("Qwen2Config", "Qwen2ForCausalLM", **LLAMA_SHAPE),
    "qwen3": lambda: _tiny("Qwen3Config", "Qwen3ForCausalLM", head_dim=8, **LLAMA_SHAPE),
    "opt": lambda: _tiny("OPTConfig", "OPTForCausalLM", hidden_size=32, num_hidden_layers=2, ffn_dim=48,
                         num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=32),
}


def _calib(n: int = 3, length: int = 12) -> torch.Tensor:
    return torch.randint(0, TINY_VOCAB, (n, length), generator=torch.Generator().manual_seed(1), dtype=torch.int64)


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_streamed_equals_whole_model(kind, tiny_tokenizer, tmp_path):
    model = BUILDERS[kind]()
    model_dir = save_model_dir(model, tiny_tokenizer, tmp_path / "model")
    ids = _calib()
    expected = compute_sensitivity(model, ids, progress=False)
    names = compute_streamed_sensitivity(model_dir, ids, tmp_path / "sens", progress=False)
    assert names == quantizable_modules(model)
    got = load_sensitivity(tmp_path / "sens", names)
    for name in names:
        assert got[name].dtype == torch.float32 and got[name].shape == expected[name].shape
        assert expected[name].abs().max() > 0
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-12)
    leftovers = sorted(p.name for p in (tmp_path / "sens").iterdir())
    assert leftovers == [f"layer_{i:03d}.safetensors" for i in range(model.config.num_hidden_layers)]


def test_sharded_checkpoint_is_read_lazily_per_layer(tiny_tokenizer, tmp_path):
    model = make_tiny_llama()
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir, max_shard_size="40KB")
    tiny_tokenizer.save_pretrained(model_dir)
    assert len(json.loads((model_dir / "model.safetensors.index.json").read_text())["weight_map"]) > 0
    assert len(list(model_dir.glob("model-*.safetensors"))) > 2
    ids = _calib(n=2)
    compute_streamed_sensitivity(model_dir, ids, tmp_path / "sens", progress=False)
    expected = compute_sensitivity(model, ids, progress=False)
    with safe_open(str(tmp_path / "sens" / "layer_001.safetensors"), framework="pt") as handle:
        assert (handle.metadata() or {}).get("format") == "anyprec-sensitivity"
        for name in handle.keys():
            torch.testing.assert_close(handle.get_tensor(name), expected[name], rtol=1e-5, atol=1e-12)


def test_per_sequence_squares_not_batch(tiny_tokenizer, tmp_path):
    """Doubling one sequence doubles its contribution: squares are taken per sequence."""
    model = make_tiny_llama()
    model_dir = save_model_dir(model, tiny_tokenizer, tmp_path / "model")
    row = _calib(n=1)
    one = compute_streamed_sensitivity(model_dir, row, tmp_path / "one", progress=False)
    compute_streamed_sensitivity(model_dir, row.repeat(2, 1), tmp_path / "two", progress=False)
    single, double = load_sensitivity(tmp_path / "one", one), load_sensitivity(tmp_path / "two", one)
    for name in one:
        torch.testing.assert_close(double[name], 2 * single[name], rtol=1e-6, atol=0)


def test_unsupported_inputs_are_named(tiny_tokenizer, tmp_path):
    model_dir = save_model_dir(make_tiny_llama(), tiny_tokenizer, tmp_path / "model")
    assert streaming_unsupported(model_dir) is None
    assert use_streamed(model_dir, "streamed") and not use_streamed(model_dir, "whole")
    with pytest.raises(ValueError, match="sensitivity mode 'fast'"):
        use_streamed(model_dir, "fast")
    for weights in model_dir.glob("*.safetensors"):
        weights.unlink()
    assert "no *.safetensors" in streaming_unsupported(model_dir)
    assert not use_streamed(model_dir, "auto")
    with pytest.raises(ValueError, match="streamed is impossible.*no \\*.safetensors"):
        use_streamed(model_dir, "streamed")
    assert "config.json" in streaming_unsupported(tmp_path)
    with pytest.raises(ValueError, match="int64"):
        compute_streamed_sensitivity(model_dir, torch.zeros(2, 8, dtype=torch.int32), tmp_path / "s")


def test_every_tested_arch_is_in_the_yaml():
    from anyprec.archs import supported_model_types

    assert STREAMED_ARCHS <= set(supported_model_types())
    assert STREAMED_ARCHS == {k.removesuffix("_tied") for k in BUILDERS}


def test_auto_streams_only_when_the_whole_pass_would_not_fit(tiny_tokenizer, tmp_path, monkeypatch):
    import anyprec.streamed_sensitivity as streamed

    model = make_tiny_llama()
    model_dir = save_model_dir(model, tiny_tokenizer, tmp_path / "model")
    n_params = sum(p.numel() for p in model.parameters())
    assert streamed.parameter_count(model_dir) == n_params
    monkeypatch.setattr(streamed, "physical_memory", lambda: 16 * n_params + 2)
    assert not use_streamed(model_dir, "auto")
    monkeypatch.setattr(streamed, "physical_memory", lambda: 16 * n_params - 2)
    assert use_streamed(model_dir, "auto")


def test_run_sensitivity_streamed_mode_writes_the_same_stage(tiny_tokenizer, tmp_path, monkeypatch):
    """quantize's sensitivity stage: streamed and whole give the same files and meta."""
    import anyprec.sensitivity as sensitivity
    from anyprec.fileio import write_json_atomic
    from anyprec.quantize import CALIB_FILE, CALIB_META, SENS_META, run_sensitivity

    model_dir = save_model_dir(make_tiny_llama(), tiny_tokenizer, tmp_path / "model")
    calib = tmp_path / "calib"
    calib.mkdir()
    save_file({"input_ids": _calib()}, str(calib / CALIB_FILE))
    write_json_atomic(calib / CALIB_META, {"sha256": "test-calibration"})
    monkeypatch.setenv("ANYPREC_CACHE", str(tmp_path / "cache-whole"))
    whole = run_sensitivity(str(model_dir), calib, tmp_path / "whole", progress=False, mode="whole")
    monkeypatch.setenv("ANYPREC_CACHE", str(tmp_path / "cache-streamed"))

    def must_not_run(*args, **kwargs):
        raise AssertionError("the whole-model pass ran in streamed mode")

    monkeypatch.setattr(sensitivity, "compute_sensitivity", must_not_run)
    streamed = run_sensitivity(str(model_dir), calib, tmp_path / "streamed", progress=False, mode="streamed")
    assert (streamed / SENS_META).read_text() == (whole / SENS_META).read_text()
    names = json.loads((whole / SENS_META).read_text())["modules"]
    got, expected = load_sensitivity(streamed, names), load_sensitivity(whole, names)
    for name in names:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-12)
    assert sorted(p.name for p in streamed.iterdir()) == sorted(p.name for p in whole.iterdir())


def test_config_switch_is_typed_and_kept_out_of_hashes():
    from anyprec.config import QuantizationConfig, config_hash, load_params

    assert load_params("params.yaml").quantization.sensitivity in ("auto", "streamed", "whole")
    assert config_hash(QuantizationConfig(sensitivity="streamed")) == config_hash(QuantizationConfig())
    with pytest.raises(ValueError, match="sensitivity"):
        QuantizationConfig(sensitivity="fast")
