"""Quantizable-module lists per architecture, and weight access in [out, in] layout."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from anyprec.archs import ARCHS_FILE, get_weight, is_conv1d, layer_groups, quantizable_modules, set_weight

LLAMA_SUFFIXES = [
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
]


def _tiny(config_cls_name: str, model_cls_name: str, **kwargs) -> nn.Module:
    import transformers

    torch.manual_seed(0)
    config = getattr(transformers, config_cls_name)(**kwargs)
    return getattr(transformers, model_cls_name)(config).eval()


def _decoder_matmul_modules(model: nn.Module, layers_prefix: str) -> set[str]:
    """Every Linear / Conv1D under the decoder layers: what the yaml must cover."""
    from transformers.pytorch_utils import Conv1D

    return {
        name for name, module in model.named_modules()
        if name.startswith(layers_prefix) and isinstance(module, (nn.Linear, Conv1D))
    }


@pytest.fixture(scope="module")
def tiny_opt():
    return _tiny("OPTConfig", "OPTForCausalLM", vocab_size=128, hidden_size=32, num_hidden_layers=2,
                 ffn_dim=48, num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=32)


@pytest.fixture(scope="module")
def tiny_qwen2():
    return _tiny("Qwen2Config", "Qwen2ForCausalLM", vocab_size=128, hidden_size=32, intermediate_size=48,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture(scope="module")
def tiny_mistral():
    return _tiny("MistralConfig", "MistralForCausalLM", vocab_size=128, hidden_size=32, intermediate_size=48,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def test_llama_modules_in_layer_order(tiny_llama):
    model, _ = tiny_llama
    names = quantizable_modules(model)
    assert names == [f"model.layers.{i}.{s}" for i in range(2) for s in LLAMA_SUFFIXES]
    assert layer_groups(model) == [names[:7], names[7:]]
    assert set(names) == _decoder_matmul_modules(model, "model.layers.")


@pytest.mark.parametrize("fixture", ["tiny_qwen2", "tiny_mistral"])
def test_llama_like_architectures(fixture, request):
    model = request.getfixturevalue(fixture)
    names = quantizable_modules(model)
    assert names == [f"model.layers.{i}.{s}" for i in range(2) for s in LLAMA_SUFFIXES]
    assert set(names) == _decoder_matmul_modules(model, "model.layers.")


def test_opt_modules(tiny_opt):
    names = quantizable_modules(tiny_opt)
    suffixes = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2"]
    assert names == [f"model.decoder.layers.{i}.{s}" for i in range(2) for s in suffixes]
    assert set(names) == _decoder_matmul_modules(tiny_opt, "model.decoder.layers.")


def test_gpt2_modules_are_conv1d(tiny_gpt2):
    model, _ = tiny_gpt2
    names = quantizable_modules(model)
    suffixes = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    assert names == [f"transformer.h.{i}.{s}" for i in range(2) for s in suffixes]
    assert set(names) == _decoder_matmul_modules(model, "transformer.h.")
    assert all(is_conv1d(model.get_submodule(n)) for n in names)
    assert not is_conv1d(model.lm_head)


def test_unsupported_model_type_names_the_yaml():
    model = nn.Linear(2, 2)
    model.config = SimpleNamespace(model_type="bert")
    with pytest.raises(ValueError, match="bert") as err:
        quantizable_modules(model)
    assert str(ARCHS_FILE) in str(err.value)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_get_weight_is_out_by_in(fixture, request):
    """x @ get_weight(m).T + bias must equal the module's own output."""
    model, _ = request.getfixturevalue(fixture)
    for name in quantizable_modules(model)[:4]:
        module = model.get_submodule(name)
        w = get_weight(module)
        assert w.dtype == torch.float32
        x = torch.randn(3, w.shape[1])
        bias = module.bias if module.bias is not None else torch.zeros(w.shape[0])
        torch.testing.assert_close(x @ w.T + bias, module(x).detach())


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_set_weight_round_trip(fixture, request):
    model = copy.deepcopy(request.getfixturevalue(fixture)[0])
    module = model.get_submodule(quantizable_modules(model)[0])
    new = torch.randn_like(get_weight(module))
    set_weight(module, new)
    torch.testing.assert_close(get_weight(module), new)
    with pytest.raises(ValueError, match="out_features"):
        set_weight(module, new.T.contiguous() if new.shape[0] != new.shape[1] else new[:1])
