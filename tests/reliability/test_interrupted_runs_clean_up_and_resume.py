"""Promise: a killed run costs little and leaves nothing behind for good: the next run removes
our own orphaned temp folders (and only those), and sensitivity resumes from its last
checkpointed chunk of calibration sequences with the same result as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

import anyprec.sensitivity as sensitivity
from anyprec.fileio import TEMP_MARKER, remove_orphan_temp_dirs
from anyprec.packed import MANIFEST
from anyprec.sensitivity import Checkpoint, compute_sensitivity

from .conftest import ROOT, run_cli, tiny_quantize_args


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _temp_dir(parent, name, owner_pid=None):
    path = parent / name
    path.mkdir()
    (path / "quantized.safetensors").write_bytes(b"partial")
    if owner_pid is not None:
        (path / TEMP_MARKER).write_text(json.dumps({"host": socket.gethostname(), "pid": owner_pid}))
    return path


def test_only_our_temp_folders_of_ended_processes_are_removed(tmp_path):
    target = tmp_path / "packed"
    orphan = _temp_dir(tmp_path, ".packed.tmp-0badf00d", _dead_pid())
    old = _temp_dir(tmp_path, ".packed.old-0badf00d", _dead_pid())
    live = _temp_dir(tmp_path, ".packed.tmp-11111111", os.getpid())  # a concurrent run's
    unmarked = _temp_dir(tmp_path, ".packed.tmp-22222222")  # not ours
    other = _temp_dir(tmp_path, ".other.tmp-33333333", _dead_pid())  # another output's
    assert sorted(remove_orphan_temp_dirs(target)) == sorted([orphan, old])
    assert live.is_dir() and unmarked.is_dir() and other.is_dir()


def test_a_run_killed_while_packing_is_cleaned_up_by_the_next_run(tiny_model_dir, tiny_quantized, tmp_path):
    _, work = tiny_quantized
    out = tmp_path / "packed"
    args = ["quantize", str(tiny_model_dir), "--out", str(out), *tiny_quantize_args(work)]
    # kill -9 this process while it writes the tensors of the artifact
    script = textwrap.dedent(f"""
        import os, signal, sys
        import anyprec.packed as packed
        from anyprec.cli import main
        def killed(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)
        packed.save_tensors = killed
        sys.exit(main({args!r}))
    """)
    killed = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert killed.returncode == -9, killed.stderr
    leftovers = list(tmp_path.glob(".packed.tmp-*"))
    assert len(leftovers) == 1 and not out.exists()
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    assert (out / MANIFEST).is_file()
    assert not list(tmp_path.glob(".packed.*")), "the orphan is gone and no new one is left"


def _interrupt_after(monkeypatch, calls: int) -> list[int]:
    """Make sequence_nll raise KeyboardInterrupt (a kill) at call number `calls`; returns a counter."""
    count = [0]
    real = sensitivity.sequence_nll

    def counting(model, ids):
        count[0] += 1
        if count[0] == calls:
            raise KeyboardInterrupt("killed")
        return real(model, ids)

    monkeypatch.setattr(sensitivity, "sequence_nll", counting)
    return count


def test_sensitivity_resumes_from_its_last_chunk_with_identical_sums(tiny_llama, tmp_path, monkeypatch):
    model, _ = tiny_llama
    ids = torch.randint(0, 300, (6, 16), generator=torch.Generator().manual_seed(0))
    expected = compute_sensitivity(model, ids, progress=False)
    checkpoint = Checkpoint(tmp_path / "partial.safetensors", key="inputs-1", chunk=2)
    _interrupt_after(monkeypatch, calls=6)  # sequences 0..4 done, chunk of 0..3 saved
    with pytest.raises(KeyboardInterrupt):
        compute_sensitivity(model, ids, progress=False, checkpoint=checkpoint)
    count = _interrupt_after(monkeypatch, calls=10**9)
    resumed = compute_sensitivity(model, ids, progress=False, checkpoint=checkpoint)
    assert count[0] == 2, "only the sequences after the last whole chunk are recomputed"
    assert expected.keys() == resumed.keys()
    assert all(torch.equal(expected[n], resumed[n]) for n in expected)


def test_a_checkpoint_of_other_inputs_or_a_torn_one_is_not_used(tiny_llama, tmp_path, monkeypatch):
    model, _ = tiny_llama
    ids = torch.randint(0, 300, (4, 16), generator=torch.Generator().manual_seed(1))
    path = tmp_path / "partial.safetensors"
    _interrupt_after(monkeypatch, calls=4)
    with pytest.raises(KeyboardInterrupt):
        compute_sensitivity(model, ids, progress=False, checkpoint=Checkpoint(path, key="inputs-1", chunk=2))
    count = _interrupt_after(monkeypatch, calls=10**9)
    compute_sensitivity(model, ids, progress=False, checkpoint=Checkpoint(path, key="inputs-2", chunk=2))
    assert count[0] == 4, "sums saved for other inputs are ignored"
    path.write_bytes(b"torn")
    count = _interrupt_after(monkeypatch, calls=10**9)
    compute_sensitivity(model, ids, progress=False, checkpoint=Checkpoint(path, key="inputs-2", chunk=2))
    assert count[0] == 4


def test_the_finished_sensitivity_stage_leaves_no_partial_sums(tiny_quantized):
    from anyprec.quantize import SENS_PARTIAL

    _, work = tiny_quantized
    assert (work / "sensitivity" / "sensitivity.json").is_file()
    assert not (work / "sensitivity" / SENS_PARTIAL).exists()
