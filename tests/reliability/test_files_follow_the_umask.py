"""Promise: every file and folder the tool writes gets the permissions the user's umask gives,
the same for tensors, JSON and tokenizer files (no file is left private by accident).
"""

from __future__ import annotations

import os
import stat

import pytest
import torch

from anyprec.fileio import save_tensors_atomic, write_json_atomic


def _modes(folder, files_only=True):
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file() or not files_only}


@pytest.fixture
def umask():
    """Set a umask for the test and restore the previous one."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield lambda mask: os.umask(mask)
    os.umask(saved)


def test_every_artifact_and_work_file_has_the_same_umask_mode(tiny_quantized, umask):
    # the tiny_quantized fixture's artifact was written under the process umask (read without changing it)
    mask = os.umask(0o022)
    os.umask(mask)
    artifact, work = tiny_quantized
    for folder in (artifact, work):
        files = _modes(folder)
        assert files and set(files.values()) == {0o666 & ~mask}, files
        folders = {n: m for n, m in _modes(folder, files_only=False).items() if n not in files}
        assert set(folders.values()) <= {0o777 & ~mask}, folders
    assert stat.S_IMODE(artifact.stat().st_mode) == 0o777 & ~mask


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_tensor_and_json_files_follow_the_umask(tmp_path, umask, mask):
    umask(mask)
    save_tensors_atomic({"x": torch.zeros(3)}, tmp_path / "t.safetensors")
    write_json_atomic(tmp_path / "m.json", {"a": 1})
    assert _modes(tmp_path) == {"t.safetensors": 0o666 & ~mask, "m.json": 0o666 & ~mask}
