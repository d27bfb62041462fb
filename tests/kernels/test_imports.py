"""anyprec.kernels imports and runs its reference path without triton installed."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
sys.modules["triton"] = None  # any `import triton` now raises ImportError
import torch
from anyprec.kernels import Backend, matmul, pack_bitplanes, resolve_backend
codes = torch.randint(0, 8, (5, 40), dtype=torch.uint8)
y = matmul(torch.randn(2, 40), pack_bitplanes(codes, 3), torch.randn(5, 8), 3, 40, backend="reference")
assert y.shape == (2, 5)
assert resolve_backend(torch.device("cpu")) in (Backend.CPU, Backend.REFERENCE)
assert not any(m.startswith(("prefect", "mlflow", "dvc")) for m in sys.modules)
print("ok")
"""


def test_kernels_import_without_triton() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
