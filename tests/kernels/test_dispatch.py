"""The dispatch point: how a backend is chosen and what the decode plans give for each one."""

from __future__ import annotations

import pytest
import torch

from anyprec.kernels import Backend, cpu, decode_plan, half_decode_plan, matmul, native_available, resolve_backend
from tests.kernels.kernels_testlib import random_layer

needs_native = pytest.mark.skipif(not native_available(), reason="native CPU kernels not built")


def test_explicit_backend_wins_without_reading_the_environment(monkeypatch):
    monkeypatch.setenv("ANYPREC_BACKEND", "gpu")  # refused if it were read
    assert resolve_backend(torch.device("cpu"), Backend.REFERENCE) is Backend.REFERENCE
    assert resolve_backend(torch.device("cpu"), "cpu") is Backend.CPU


def test_environment_value_is_trimmed_and_case_folded(monkeypatch):
    monkeypatch.setenv("ANYPREC_BACKEND", " Reference ")
    assert resolve_backend(torch.device("cpu")) is Backend.REFERENCE


def test_unknown_backend_names_its_source_and_the_choices(monkeypatch):
    with pytest.raises(ValueError, match=r"'fast' from the backend argument; use one of: reference, cpu, triton"):
        resolve_backend(torch.device("cpu"), "fast")
    _, luts, planes = random_layer(4, 40, 3, seed=0)
    monkeypatch.setenv("ANYPREC_BACKEND", "fast")
    with pytest.raises(ValueError, match=r"from env ANYPREC_BACKEND"):
        matmul(torch.randn(1, 40), planes, luts[3], 3, 40)  # backend=None: read at the call


@pytest.mark.parametrize("backend", [Backend.REFERENCE, Backend.TRITON])
def test_no_decode_plan_outside_the_native_backend(backend):
    _, luts, planes = random_layer(5, 40, 4, seed=1)
    assert decode_plan(planes, luts[4], 4, 40, backend) is None
    assert half_decode_plan(torch.randn(5, 40).half(), backend) is None


@needs_native
@pytest.mark.parametrize("bits", [3, 8])
def test_decode_plan_matches_matmul_on_the_reference(bits):
    _, luts, planes = random_layer(33, 70, 8, seed=bits)
    plan = decode_plan(planes, luts[bits].half(), bits, 70, Backend.CPU)
    assert isinstance(plan, cpu.DecodePlan)
    x = torch.randn(3, 70, generator=torch.Generator().manual_seed(bits))
    assert plan.accepts(x) and not plan.accepts(torch.randn(9, 70)) and not plan.accepts(x.double())
    expected = matmul(x, planes, luts[bits].half(), bits, 70, backend=Backend.REFERENCE)
    torch.testing.assert_close(plan(x), expected, rtol=1e-5, atol=1e-5)


@needs_native
def test_half_decode_plan_is_the_widened_fp32_layer():
    weight = torch.randn(21, 50, generator=torch.Generator().manual_seed(2)).half()
    plan = half_decode_plan(weight, Backend.CPU)
    x = torch.randn(2, 50)
    torch.testing.assert_close(plan(x), torch.nn.functional.linear(x, weight.float()), rtol=1e-5, atol=1e-5)
