"""Promise: every mistake a user can make gives one or two lines naming the flag, path or value
and the fix, with a distinct exit code (2 input, 3 output refused, 4 system), and no traceback.
A bug (an exception nobody raised on purpose) still shows its traceback.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from anyprec.cli import main
from anyprec.errors import EXIT_INPUT, EXIT_OUTPUT, EXIT_SYSTEM

from .conftest import assert_short_error, run_cli, tiny_quantize_args


def _quantize(model: Path, out: Path, *flags: str) -> list[str]:
    return ["quantize", str(model), "--out", str(out), *flags]


@pytest.mark.parametrize(
    ("flags", "names"),
    [
        (["--seed-bits", "1", "--parent-bits", "1"], ["--seed-bits 1"]),
        (["--seed-bits", "5", "--parent-bits", "5"], ["--seed-bits 5 must be below --parent-bits 5"]),
        (["--seed-bits", "3", "--parent-bits", "9"], ["--parent-bits 9", "less than or equal to 8"]),
        (["--samples", "0"], ["--samples 0", "greater than or equal to 1"]),
        (["--seq-len", "4"], ["--seq-len 4", "greater than or equal to 8"]),
        (["--lookahead-weight", "-1"], ["--lookahead-weight -1", "greater than or equal to 0"]),
        (["--lookahead-weight", "abc"], ["--lookahead-weight 'abc' is not a number", "none for plain splits"]),
    ],
)
def test_out_of_range_settings_name_the_flag(tiny_model_dir, tmp_path, flags, names, capsys):
    assert main(_quantize(tiny_model_dir, tmp_path / "out", *flags)) == EXIT_INPUT
    err = capsys.readouterr().err
    assert_short_error(err, *names)
    assert "seed_bits" not in err and "validation error" not in err, "config field names are not shown"
    assert not (tmp_path / "out").exists()


def test_seq_len_longer_than_the_models_context_is_refused(tiny_model_dir, tmp_path, capsys):
    assert main(_quantize(tiny_model_dir, tmp_path / "out", "--seq-len", "512")) == EXIT_INPUT
    assert_short_error(capsys.readouterr().err, "--seq-len 512", "context of 256 tokens", "--seq-len 256 or less")


def test_a_model_folder_without_weights_is_named(model_copy, tmp_path, capsys):
    for weights in model_copy.glob("*.safetensors"):
        weights.unlink()
    assert main(_quantize(model_copy, tmp_path / "out")) == EXIT_INPUT
    assert_short_error(capsys.readouterr().err, str(model_copy), "no safetensors weights")


def test_a_folder_holding_only_config_json_asks_for_the_tokenizer(model_copy, tmp_path, capsys):
    for path in model_copy.iterdir():
        if path.name not in {"config.json", "model.safetensors"}:
            path.unlink()
    assert main(_quantize(model_copy, tmp_path / "out")) == EXIT_INPUT
    err = capsys.readouterr().err
    assert_short_error(err, "no tokenizer files", "tokenizer.save_pretrained")
    assert "sentencepiece" not in err


def test_a_broken_config_json_is_named(model_copy, tmp_path, capsys):
    (model_copy / "config.json").write_text("{ not json")
    assert main(_quantize(model_copy, tmp_path / "out")) == EXIT_INPUT
    assert_short_error(capsys.readouterr().err, "config.json", "cannot be read as JSON")


def _namespace_mount(options: str, target: Path) -> list[str] | None:
    """argv prefix running a command with a fresh tmpfs at `target` (private mount namespace)."""
    if shutil.which("unshare") is None:
        return None
    target.mkdir(parents=True, exist_ok=True)
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o {options} none {target}"],
                           capture_output=True)
    if probe.returncode != 0:
        return None
    return ["unshare", "-m", "sh", "-c", f'mount -t tmpfs -o {options} none {target} && exec "$@"', "sh"]


def _run_in_mount(prefix: list[str], *args: str) -> subprocess.CompletedProcess:
    import os
    import sys

    from .conftest import ROOT

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([*prefix, sys.executable, "-m", "anyprec.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_a_read_only_out_fails_before_any_work(tiny_model_dir, tmp_path):
    prefix = _namespace_mount("ro", tmp_path / "ro")
    if prefix is None:
        pytest.skip("cannot mount a read-only tmpfs here (needs unshare -m)")
    # no --work-dir: the refusal must come before calibration starts
    done = _run_in_mount(prefix, *_quantize(tiny_model_dir, tmp_path / "ro" / "out", "--seq-len", "32"))
    assert done.returncode == EXIT_SYSTEM, done.stderr
    assert_short_error(done.stderr, f"--out {tmp_path / 'ro' / 'out'}", "Read-only", "choose a writable location")
    assert "sensitivity" not in done.stderr


def test_a_mount_point_as_out_is_refused(tiny_model_dir, tmp_path):
    prefix = _namespace_mount("rw", tmp_path / "mnt")
    if prefix is None:
        pytest.skip("cannot mount a tmpfs here (needs unshare -m)")
    done = _run_in_mount(prefix, *_quantize(tiny_model_dir, tmp_path / "mnt", "--seq-len", "32"))
    assert done.returncode == EXIT_OUTPUT, done.stderr
    assert_short_error(done.stderr, "mount point", "choose a folder inside it")


def test_a_really_full_disk_is_reported_and_leaves_nothing(tiny_model_dir, tiny_quantized, tmp_path):
    prefix = _namespace_mount("size=256k", tmp_path / "small")
    if prefix is None:
        pytest.skip("cannot mount a small tmpfs here (needs unshare -m)")
    _, work = tiny_quantized
    out = tmp_path / "small" / "out"
    done = _run_in_mount(prefix, *_quantize(tiny_model_dir, out, *tiny_quantize_args(work)))
    assert done.returncode == EXIT_SYSTEM, done.stderr
    assert_short_error(done.stderr, "No space left on device", "free space there")


def test_a_full_disk_while_writing_tensors_is_reported_and_leaves_nothing(tiny_model_dir, tiny_quantized, tmp_path,
                                                                          monkeypatch, capsys):
    import safetensors.torch

    _, work = tiny_quantized
    real_save = safetensors.torch.save_file

    def disk_fills_up(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as fh:  # what is on disk when the device fills mid-write
            fh.truncate(fh.seek(0, 2) // 2)
        raise OSError(errno.ENOSPC, "No space left on device", str(filename))

    monkeypatch.setattr(safetensors.torch, "save_file", disk_fills_up)
    out = tmp_path / "out"
    assert main(_quantize(tiny_model_dir, out, *tiny_quantize_args(work))) == EXIT_SYSTEM
    assert_short_error(capsys.readouterr().err, "No space left on device", "free space there")
    assert list(tmp_path.iterdir()) == [], "no partial artifact and no temp folder is left"


def test_an_empty_prompt_is_refused(tiny_artifact, capsys):
    assert main(["generate", str(tiny_artifact), "--prompt", ""]) == EXIT_INPUT
    assert_short_error(capsys.readouterr().err, "--prompt is empty")


def test_an_error_reaches_the_shell_as_an_exit_code_without_traceback(tmp_path):
    done = run_cli("info", str(tmp_path))
    assert done.returncode == EXIT_INPUT
    assert_short_error(done.stderr, "not an anyprec artifact")


def test_a_bug_keeps_its_traceback(tiny_artifact, monkeypatch):
    import anyprec.packed

    def buggy(*args, **kwargs):
        return json.loads("{")  # a ValueError raised inside the standard library, not by us

    monkeypatch.setattr(anyprec.packed, "artifact_sizes", buggy)
    with pytest.raises(json.JSONDecodeError):
        main(["info", str(tiny_artifact)])
