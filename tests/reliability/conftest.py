"""Shared pieces of the reliability battery: real CLI runs, in-process and as a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_CALIB

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m anyprec.cli ARGS` in a fresh process (exit code and stderr as a user sees them)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "anyprec.cli", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env, timeout=timeout)


def assert_short_error(stderr: str, *must_contain: str) -> None:
    """A user error: no traceback, at most two lines after 'error:', naming what it must."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if line.startswith("error: "))
    assert len(lines) - start <= 2, stderr
    for text in must_contain:
        assert text in stderr, (text, stderr)


def tiny_quantize_args(work_dir: Path) -> list[str]:
    """Flags that make `anyprec quantize` of the tiny model reuse the tiny_quantized fixture's finished work."""
    return ["--samples", str(TINY_CALIB["n_samples"]), "--seq-len", str(TINY_CALIB["seq_len"]),
            "--work-dir", str(work_dir)]


@pytest.fixture
def artifact_copy(tiny_artifact, tmp_path) -> Path:
    """A private copy of the tiny artifact, free to tamper with."""
    dst = tmp_path / "artifact"
    shutil.copytree(tiny_artifact, dst)
    return dst


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path) -> Path:
    """A private copy of the tiny model folder, free to damage."""
    dst = tmp_path / "model"
    shutil.copytree(tiny_model_dir, dst)
    return dst
