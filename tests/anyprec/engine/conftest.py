"""Fixtures shared by the engine tests."""

import pytest

from anyprec.kernels import cpu

# kernel families this CPU runs: portable C always, AVX2 where the CPU has it
FAMILIES = ["portable"] + (["avx2"] if cpu.is_available() and cpu._lib().best_isa() in ("avx2", "avx512") else [])


@pytest.fixture(params=FAMILIES)
def family(request):
    """The native kernels pinned to one family for the test, restored after it."""
    lib = cpu._lib()
    before = lib.isa()
    lib.set_isa(request.param)
    yield request.param
    lib.set_isa(before)
