"""Kernel tests: run Triton kernels in the interpreter (no GPU on our machines), and the
`isa` fixture that runs a native test once per ISA family this CPU has.

TRITON_INTERPRET must be set before `@triton.jit` decorates the kernels, i.e. before
anyprec.kernels.triton_kernels is imported; this conftest is loaded first.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from anyprec.kernels import cpu  # noqa: E402

ISAS = ["portable", "avx2", "avx512"]


def _isas() -> list[str]:
    return ISAS[: ISAS.index(cpu.best_isa()) + 1] if cpu.is_available() else []


@pytest.fixture(params=_isas())
def isa(request: pytest.FixtureRequest):
    before = cpu.isa()
    cpu.set_isa(request.param)
    yield request.param
    cpu.set_isa(before)
