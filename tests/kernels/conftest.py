"""Kernel tests: run Triton kernels in the interpreter (no GPU on our machines).

TRITON_INTERPRET must be set before `@triton.jit` decorates the kernels, i.e. before
anyprec.kernels.triton_kernels is imported; this conftest is loaded first.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
