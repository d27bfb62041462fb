"""The lean resident form (luts="u8", the default load): uint8 LUTs, an int8 head, true bytes."""

from __future__ import annotations

import copy

import pytest
import torch

from anyprec.int8_head import Int8Head, Int8Table
from anyprec.kernels import Backend, dequantize, native_available
from anyprec.lutq import QuantizedLut, quantize_lut
from anyprec.packed import artifact_sizes
from anyprec.runtime import AnyPrecisionLinear, load_anyprec


@pytest.fixture(scope="module")
def apm(tiny_artifact):
    return load_anyprec(tiny_artifact)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 300, (1, 20), generator=torch.Generator().manual_seed(2))


def test_layers_hold_uint8_luts_quantized_from_the_stored_fp16(apm, tiny_artifact):
    exact = load_anyprec(tiny_artifact, bits=[4], luts="fp16")
    name = next(iter(apm.manifest["modules"]))
    lean, fp16 = apm.model.get_submodule(name), exact.model.get_submodule(name)
    assert lean.lut_form == "u8" and fp16.lut_form == "fp16"
    assert lean.get_buffer("lut4").dtype == torch.uint8 and fp16.get_buffer("lut4").dtype == torch.float16
    want = quantize_lut(fp16.get_buffer("lut4"))
    assert all(torch.equal(a, b) for a, b in zip(lean.lut(4), want))
    assert not any(t.dtype == torch.float16 for t in lean.buffers())  # the fp16 tables are not kept


@pytest.mark.parametrize("bits", [3, 5, 8])
def test_forward_equals_a_float_model_with_the_dequantized_weights(apm, tiny_llama, ids, bits):
    """The transformers forward of the lean load == the base model whose every quantized weight is
    lo + scale * q at its code and whose head is scale * q: nothing else differs."""
    base = copy.deepcopy(tiny_llama[0])
    with torch.no_grad():
        for name, mod in apm.model.named_modules():
            if isinstance(mod, AnyPrecisionLinear):
                w = dequantize(mod.planes, mod.lut(bits), bits, mod.in_features, backend=Backend.REFERENCE)
                base.get_submodule(name).weight.copy_(w)
        table = apm.model.lm_head.table
        base.lm_head.weight.copy_(table.q.float() * table.scale[:, None])
        for name, tensor in base.state_dict().items():  # dense tensors: the artifact's fp16 values
            if "embed_tokens" in name or "norm" in name:
                tensor.copy_(tensor.half().float())
    with torch.inference_mode():
        want = base(ids).logits
        got = apm(ids, precision=bits).logits
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        step = apm(ids[:, :3], precision=bits).logits  # <= 8 rows: the native decode paths
        torch.testing.assert_close(step, base(ids[:, :3]).logits, rtol=1e-4, atol=1e-4)


def test_no_float_copy_of_the_head_stays_resident(apm):
    head = apm.model.get_output_embeddings()
    assert isinstance(head, Int8Head) and head.table.q.dtype == torch.int8
    v, e = head.table.q.shape
    floats = [n for n, t in list(apm.model.named_parameters()) + list(apm.model.named_buffers())
              if t.shape == (v, e) and t.is_floating_point()]
    untied = not apm.model.config.tie_word_embeddings
    assert floats == (["model.embed_tokens.weight"] if untied else [])  # untied: the embedding stays as loaded


def test_tied_embedding_shares_the_int8_table(apm):
    from transformers import AutoModelForCausalLM

    from anyprec.int8_head import Int8Embedding, install_int8_head

    # Tie what the tiny (untied) artifact keeps apart: the install shares one table.
    config = apm.model.config.__class__(**{**apm.model.config.to_dict(), "tie_word_embeddings": True})
    fresh = AutoModelForCausalLM.from_config(config)
    install_int8_head(fresh, torch.float32)
    assert isinstance(fresh.get_input_embeddings(), Int8Embedding)
    assert fresh.get_input_embeddings().table is fresh.get_output_embeddings().table
    assert not any(t.is_floating_point() and t.shape == fresh.get_output_embeddings().table.q.shape
                   for t in fresh.parameters())
    ids = torch.tensor([[4, 9, 300]])
    table = fresh.get_output_embeddings().table
    want = table.q[ids].float() * table.scale[ids][..., None]
    assert torch.equal(fresh.get_input_embeddings()(ids), want)


@pytest.mark.parametrize("bits", [3, 8])
def test_info_bytes_are_the_resident_tensors(tiny_artifact, bits):
    apm = load_anyprec(tiny_artifact, bits=[bits])
    seen, total = set(), 0
    for t in list(apm.model.state_dict(keep_vars=True).values()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    assert total == artifact_sizes(tiny_artifact)["per_bits"][bits]["total"]


def test_int8_head_paths_agree():
    gen = torch.Generator().manual_seed(0)
    q = torch.randint(-127, 128, (9000, 40), generator=gen, dtype=torch.int8)  # > one HEAD_CHUNK_ROWS
    head = Int8Head(Int8Table(q, torch.rand(9000, generator=gen)))
    want = lambda x: x.double() @ (q.double() * head.table.scale.double()[:, None]).T  # noqa: E731
    for rows in (1, 8, 30):  # decode plan (native) and widened chunks
        x = torch.randn(rows, 40, generator=gen)
        torch.testing.assert_close(head(x).double(), want(x), rtol=1e-5, atol=1e-4)
    assert (head._plan is not None) == native_available()


def test_bad_luts_value_is_named(tiny_artifact):
    with pytest.raises(ValueError, match="luts='int4' is not one of u8, fp16"):
        load_anyprec(tiny_artifact, luts="int4")


def test_fp16_load_is_unchanged(tiny_artifact, ids):
    exact = load_anyprec(tiny_artifact, bits=[5], luts="fp16")
    layer = next(m for m in exact.model.modules() if isinstance(m, AnyPrecisionLinear))
    assert not isinstance(layer.lut(5), QuantizedLut) and layer.lut(5).dtype == torch.float16
    assert not isinstance(exact.model.get_output_embeddings(), Int8Head)
