"""The runtime model: per-model and per-call precision, subsets, generate, thread safety."""

from __future__ import annotations

import threading

import pytest
import torch

from anyprec.kernels import Backend, matmul, native_available, pack_bitplanes
from anyprec.packed import QuantizedModule
from anyprec.runtime import AnyPrecisionLinear, HalfStoredHead, PrecisionState, load_anyprec


@pytest.fixture(scope="module")
def apm(tiny_artifact):
    return load_anyprec(tiny_artifact)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 300, (1, 24), generator=torch.Generator().manual_seed(0))


def test_quantized_layers_are_replaced(apm):
    n_quantized = sum(isinstance(m, AnyPrecisionLinear) for m in apm.model.modules())
    assert n_quantized == len(apm.manifest["modules"]) == 14
    assert apm.bits_available == [3, 4, 5, 6, 7, 8]
    assert apm.current_precision == 8


def test_error_shrinks_with_bits_and_8bit_is_close(apm, tiny_llama, ids):
    base, _ = tiny_llama
    with torch.inference_mode():
        ref = base(ids).logits
        errors = [float((apm(ids, precision=b).logits - ref).abs().mean()) for b in apm.bits_available]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.01 * float(ref.abs().mean())


def test_per_call_precision_does_not_change_default(apm, ids):
    with torch.inference_mode():
        at3 = apm(ids, precision=3).logits
        assert apm.current_precision == 8
        apm.set_precision(3)
        try:
            assert torch.equal(apm(ids).logits, at3)
            assert not torch.equal(apm(ids, precision=8).logits, at3)
        finally:
            apm.set_precision(8)


def test_unloaded_precision_is_refused(tiny_artifact, ids):
    small = load_anyprec(tiny_artifact, bits=[3, 4])
    assert small.bits_available == [3, 4] and small.current_precision == 4
    layer = next(m for m in small.model.modules() if isinstance(m, AnyPrecisionLinear))
    assert layer.planes.shape[0] == 4 and not hasattr(layer, "lut5")
    with pytest.raises(ValueError, match=r"set_precision 6: 6 bits is not loaded \(the artifact holds 3..8"):
        small.set_precision(6)
    with pytest.raises(ValueError, match="not loaded"):
        small(ids, precision=8)


def test_subset_load_matches_full_load(apm, tiny_artifact, ids):
    small = load_anyprec(tiny_artifact, bits=4)
    with torch.inference_mode():
        assert torch.equal(small(ids).logits, apm(ids, precision=4).logits)


def test_generate_per_precision(apm, ids):
    outs = {b: apm.generate(ids, precision=b, max_new_tokens=6, do_sample=False, pad_token_id=2)
            for b in (3, 8)}
    for out in outs.values():
        assert out.shape == (1, ids.shape[1] + 6)
        assert torch.equal(out[:, : ids.shape[1]], ids)
    assert apm.current_precision == 8


def test_concurrent_calls_keep_their_own_precision(apm, ids):
    with torch.inference_mode():
        expected = {b: apm(ids, precision=b).logits for b in (3, 5, 8)}
    results: dict[tuple[int, int], bool] = {}

    def worker(b: int, rep: int) -> None:
        with torch.inference_mode():
            results[(b, rep)] = torch.equal(apm(ids, precision=b).logits, expected[b])

    threads = [threading.Thread(target=worker, args=(b, r)) for r in range(3) for b in (3, 5, 8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 9 and all(results.values()), results


@pytest.mark.skipif(not native_available(), reason="native CPU kernels not built")
@pytest.mark.parametrize("bits", [3, 4, 5, 6, 7, 8])
def test_decode_steps_match_reference(apm, bits):
    """Few-token calls take the layer's native decode plan; the reference path is the oracle."""
    layer = next(m for m in apm.model.modules() if isinstance(m, AnyPrecisionLinear))
    x = torch.randn(2, 3, layer.in_features, generator=torch.Generator().manual_seed(bits))
    lut = layer.lut(bits)
    expected = matmul(x, layer.planes, lut, bits, layer.in_features, backend="reference")
    with torch.inference_mode(), apm.precision(bits):
        got = layer(x)
        assert layer._plans[bits] is not None  # the fast path ran
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        layer.to(torch.float32)  # replaces nothing here, but must drop the plans
        assert not layer._plans
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_backend_is_resolved_at_load_and_on_to_never_per_call(tiny_artifact, ids, monkeypatch):
    monkeypatch.setenv("ANYPREC_BACKEND", "reference")
    model = load_anyprec(tiny_artifact, bits=3)
    layers = [m for m in model.model.modules() if isinstance(m, AnyPrecisionLinear)]
    head = model.model.get_output_embeddings()
    assert {m.backend for m in layers} == {Backend.REFERENCE} and head.backend is Backend.REFERENCE
    assert head._plan is None  # the fp16 decode plan is the native backend's
    # A value the rule refuses: neither prefill nor a decode step may read it.
    monkeypatch.setenv("ANYPREC_BACKEND", "gpu")
    with torch.inference_mode():
        prefill = model(ids).logits
        model(ids[:, :1])
    assert layers[0]._plans == {3: None}
    with pytest.raises(ValueError, match="ANYPREC_BACKEND"):
        model.model.to("cpu")  # `.to()` resolves again
    monkeypatch.delenv("ANYPREC_BACKEND")
    model.model.to("cpu")
    native = Backend.CPU if native_available() else Backend.REFERENCE
    assert {m.backend for m in layers} == {native} and head.backend is native
    with torch.inference_mode():
        torch.testing.assert_close(model(ids).logits, prefill, rtol=1e-4, atol=1e-4)
        model(ids[:, :1])
    assert (layers[0]._plans[3] is not None) == (native is Backend.CPU)


def _layer(state: PrecisionState) -> AnyPrecisionLinear:
    codes = torch.randint(0, 8, (16, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    luts = {3: torch.linspace(-1, 1, 8).repeat(16, 1).half()}
    return AnyPrecisionLinear(QuantizedModule(pack_bitplanes(codes, 3), luts, 40), state)


def test_backend_follows_the_layers_device():
    layer = _layer(PrecisionState(3, [3]))
    assert layer.backend is (Backend.CPU if native_available() else Backend.REFERENCE)
    layer.to("meta")  # neither cpu nor cuda: the device rule gives the reference
    assert layer.backend is Backend.REFERENCE and not layer._plans


@pytest.mark.skipif(not native_available(), reason="native CPU kernels not built")
def test_output_head_decodes_from_its_fp16_copy(tiny_artifact):
    head = load_anyprec(tiny_artifact, bits=3, luts="fp16").model.get_output_embeddings()
    assert isinstance(head, HalfStoredHead)
    assert torch.equal(head.weight_f16.float(), head.weight)  # the same values, half the bytes
    x = torch.randn(1, 2, head.in_features, generator=torch.Generator().manual_seed(1))
    expected = torch.nn.functional.linear(x, head.weight)
    with torch.inference_mode():
        got = head(x)
        assert head._plan is not None  # the fp16 decode path ran
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        prefill = torch.randn(1, 20, head.in_features)
        torch.testing.assert_close(head(prefill), torch.nn.functional.linear(prefill, head.weight))
    head.to(torch.float32)
    assert head._plan is None
