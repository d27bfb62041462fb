"""Promise: `anyprec quantize --out DIR` never deletes or overwrites anything it did not create.

Refused before any work, with exit code 3 and everything left as it was: a non-empty folder
that is not one of our artifacts, the input model's folder or one that contains it or lies
inside it, a mount point. One of our own artifacts is replaced only with --force.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from anyprec.cli import main
from anyprec.errors import EXIT_OUTPUT, OutputError
from anyprec.packed import MANIFEST, check_replaceable

from .conftest import assert_short_error, run_cli, tiny_quantize_args


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_folder_of_user_files_is_refused_and_left_untouched(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "sub").mkdir(parents=True)
    (out / "thesis.tex").write_text("years of work")
    (out / "sub" / "data.csv").write_text("1,2,3")
    before = _snapshot(out)
    assert main(["quantize", str(tiny_model_dir), "--out", str(out), "--force"]) == EXIT_OUTPUT
    assert_short_error(capsys.readouterr().err, f"--out {out}", "not an anyprec artifact", "nothing was changed")
    assert _snapshot(out) == before


@pytest.mark.parametrize("where", ["the model folder", "a folder containing it", "a folder inside it"])
def test_the_input_model_folder_is_never_an_output(model_copy, where, capsys):
    out = {"the model folder": model_copy, "a folder containing it": model_copy.parent,
           "a folder inside it": model_copy / "packed"}[where]
    before = _snapshot(model_copy)
    assert main(["quantize", str(model_copy), "--out", str(out), "--force"]) == EXIT_OUTPUT
    relation = {"the model folder": "is", "a folder containing it": "contains", "a folder inside it": "lies inside"}
    assert_short_error(capsys.readouterr().err, f"{relation[where]} the input model's folder")
    assert _snapshot(model_copy) == before


def test_a_previous_artifact_is_replaced_only_with_force(tiny_model_dir, tiny_quantized, artifact_copy, capsys):
    _, work = tiny_quantized
    args = ["quantize", str(tiny_model_dir), "--out", str(artifact_copy), *tiny_quantize_args(work)]
    manifest_before = (artifact_copy / MANIFEST).read_bytes()
    assert main(args) == EXIT_OUTPUT
    assert_short_error(capsys.readouterr().err, "already holds an anyprec artifact", "--force")
    assert (artifact_copy / MANIFEST).read_bytes() == manifest_before
    assert main([*args, "--force"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert not list(artifact_copy.parent.glob(f".{artifact_copy.name}.*")), "no temp or old folder is left"


def test_an_artifact_holding_a_user_file_is_not_replaced_even_with_force(tiny_model_dir, artifact_copy, capsys):
    (artifact_copy / "notes.txt").write_text("my notes")
    assert main(["quantize", str(tiny_model_dir), "--out", str(artifact_copy), "--force"]) == EXIT_OUTPUT
    assert_short_error(capsys.readouterr().err, "notes.txt", "nothing was changed")
    assert (artifact_copy / "notes.txt").read_text() == "my notes"


def test_the_library_writer_refuses_a_foreign_folder_too(tmp_path):
    # the pipeline calls the writer directly (no CLI check): it must refuse on its own
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(OutputError, match="not an anyprec artifact"):
        check_replaceable(out)
    assert (out / "keep.txt").read_text() == "x"


def test_a_mount_point_is_refused():
    mount = Path("/dev/shm")
    if not os.path.ismount(mount):
        pytest.skip("/dev/shm is not a mount point on this machine")
    with pytest.raises(OutputError, match="mount point"):
        check_replaceable(mount)


def test_an_empty_folder_is_accepted_and_the_exit_code_reaches_the_shell(tiny_model_dir, tiny_quantized, tmp_path):
    _, work = tiny_quantized
    out = tmp_path / "empty"
    out.mkdir()
    done = run_cli("quantize", str(tiny_model_dir), "--out", str(out), *tiny_quantize_args(work))
    assert done.returncode == 0, done.stderr
    assert (out / MANIFEST).is_file()
    refused = run_cli("quantize", str(tiny_model_dir), "--out", str(out), *tiny_quantize_args(work))
    assert refused.returncode == EXIT_OUTPUT
    assert_short_error(refused.stderr, "--force")
