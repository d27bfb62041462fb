"""Promise: loading an artifact reads only files its manifest lists, inside its folder, each
checked against its sha256; a damaged manifest or tensor header is one clear error.

Holds for `load_anyprec`, `anyprec info`, `anyprec generate`. Nothing can switch the hash
check off from inside the artifact; `anyprec info --verify` checks every hash and `info`
says whether it did.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from anyprec.cli import main
from anyprec.fileio import sha256_file
from anyprec.manifest import DENSE_FILE, MANIFEST, ArtifactError, shard_name
from anyprec.packed import load_packed_tensors
from anyprec.runtime import load_anyprec

from .conftest import assert_short_error

SHARD = shard_name(0, 2)  # the tiny model's first decoder layer


def _edit_manifest(artifact: Path, edit) -> None:
    manifest = json.loads((artifact / MANIFEST).read_text())
    edit(manifest)
    (artifact / MANIFEST).write_text(json.dumps(manifest))


def _relist(artifact: Path, name: str) -> None:
    """Record a tampered file's new size and sha256, as a careful attacker would."""
    path = artifact / name
    _edit_manifest(artifact, lambda m: m["files"].__setitem__(name, {"sha256": sha256_file(path),
                                                                      "bytes": path.stat().st_size}))


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_deleting_a_files_entry_does_not_switch_off_its_hash_check(artifact_copy, capsys):
    _edit_manifest(artifact_copy, lambda m: m["files"].pop("tokenizer.json"))
    _flip_last_byte(artifact_copy / "tokenizer.json")
    with pytest.raises(ArtifactError, match="not listed in manifest.json"):
        load_anyprec(artifact_copy)
    for argv in (["info", str(artifact_copy)], ["generate", str(artifact_copy), "--prompt", "The", "--bits", "3"]):
        assert main(argv) == 2
        assert_short_error(capsys.readouterr().err, "tokenizer.json", "not listed")


def test_a_missing_entry_for_a_required_file_is_an_error(artifact_copy, capsys):
    _edit_manifest(artifact_copy, lambda m: m["files"].pop(SHARD))
    (artifact_copy / SHARD).unlink()
    assert main(["info", str(artifact_copy)]) == 2
    assert_short_error(capsys.readouterr().err, "listed in files", SHARD)


@pytest.mark.parametrize("name", ["../../../../etc/passwd", "/etc/passwd", "sub/config.json", ".."])
def test_a_file_name_that_leaves_the_folder_is_refused_unread(artifact_copy, name, capsys):
    outside = Path("/etc/passwd")
    entry = {"sha256": sha256_file(outside), "bytes": outside.stat().st_size}
    _edit_manifest(artifact_copy, lambda m: m["files"].__setitem__(name, entry))
    with pytest.raises(ArtifactError, match="not a plain file name"):
        load_packed_tensors(artifact_copy)
    assert main(["info", str(artifact_copy)]) == 2
    err = capsys.readouterr().err
    assert_short_error(err, "not a plain file name")
    assert f"{outside.stat().st_size} bytes" not in err, "nothing about the outside file is revealed"


def test_a_symlink_leaving_the_folder_is_refused(artifact_copy, tmp_path):
    outside = tmp_path / "outside.json"
    os.replace(artifact_copy / "config.json", outside)
    (artifact_copy / "config.json").symlink_to(outside)
    with pytest.raises(ArtifactError, match="symlink leaving the artifact folder"):
        load_anyprec(artifact_copy)


@pytest.mark.parametrize("field", ["seed_bits", "files", "modules", "parent_bits", "inputs"])
def test_a_missing_manifest_field_is_one_clear_error(artifact_copy, field, capsys):
    _edit_manifest(artifact_copy, lambda m: m.pop(field))
    assert main(["info", str(artifact_copy)]) == 2
    assert_short_error(capsys.readouterr().err, f"field '{field}'", "re-run `anyprec quantize`")


@pytest.mark.parametrize(("field", "value"), [("seed_bits", "3"), ("parent_bits", 3.5), ("modules", []),
                                               ("seed_bits", 9), ("files", {"dense.safetensors": 1})])
def test_an_ill_typed_manifest_field_is_one_clear_error(artifact_copy, field, value, capsys):
    _edit_manifest(artifact_copy, lambda m: m.__setitem__(field, value))
    assert main(["info", str(artifact_copy)]) == 2
    assert_short_error(capsys.readouterr().err, f"field '{field}")


def _rewrite_header(path: Path, edit) -> None:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    edit(header)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length :])


def test_a_header_claiming_an_enormous_length_is_refused_before_reading(artifact_copy):
    path = artifact_copy / DENSE_FILE
    data = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 2**60) + data[8:])
    _relist(artifact_copy, DENSE_FILE)
    with pytest.raises(ArtifactError, match="header claims"):
        load_packed_tensors(artifact_copy)


def test_a_header_claiming_an_enormous_shape_is_refused_before_allocating(artifact_copy):
    def grow(header):
        name = next(k for k in header if k != "__metadata__")
        header[name]["shape"] = [2**40, 2**20]

    _rewrite_header(artifact_copy / DENSE_FILE, grow)
    _relist(artifact_copy, DENSE_FILE)
    with pytest.raises(ArtifactError, match="claims shape"):
        load_packed_tensors(artifact_copy)


def test_tensor_shapes_must_match_the_manifests_modules(artifact_copy, capsys):
    first = next(iter(json.loads((artifact_copy / MANIFEST).read_text())["modules"]))
    _edit_manifest(artifact_copy, lambda m: m["modules"][first].__setitem__("out_features", 10**6))
    with pytest.raises(ArtifactError, match=r"\.planes.*manifest implies"):
        load_packed_tensors(artifact_copy)
    assert main(["info", str(artifact_copy)]) == 2
    assert_short_error(capsys.readouterr().err, "manifest implies")


def test_info_verify_checks_every_hash_and_info_says_whether_it_did(artifact_copy, capsys):
    assert main(["info", str(artifact_copy), "--verify"]) == 0
    assert "verified: every file's size and sha256 match" in capsys.readouterr().out
    _flip_last_byte(artifact_copy / SHARD)
    assert main(["info", str(artifact_copy)]) == 0
    assert "add --verify to check every file's sha256" in capsys.readouterr().out
    assert main(["info", str(artifact_copy), "--verify"]) == 2
    assert_short_error(capsys.readouterr().err, SHARD, "sha256")


def test_info_catches_a_truncated_file_without_verify(artifact_copy, capsys):
    data = (artifact_copy / DENSE_FILE).read_bytes()
    (artifact_copy / DENSE_FILE).write_bytes(data[: len(data) // 2])
    assert main(["info", str(artifact_copy)]) == 2
    assert_short_error(capsys.readouterr().err, "truncated")


def test_no_code_from_an_artifact_runs(artifact_copy, tmp_path):
    ran = tmp_path / "ran"
    (artifact_copy / "evil.py").write_text(f"open({str(ran)!r}, 'w').write('ran')\n")
    config = json.loads((artifact_copy / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.Config", "AutoModelForCausalLM": "evil.Model"}
    (artifact_copy / "config.json").write_text(json.dumps(config))
    for name in ("config.json", "evil.py"):
        _relist(artifact_copy, name)
    with pytest.raises(ArtifactError, match="never runs code"):
        load_anyprec(artifact_copy)
    assert not ran.exists()


def test_an_artifact_that_disagrees_with_its_config_is_one_clear_error(artifact_copy, capsys):
    """Hashes and headers consistent, but config.json describes another model (hashes updated)."""
    config = json.loads((artifact_copy / "config.json").read_text())
    config["intermediate_size"] += 8
    (artifact_copy / "config.json").write_text(json.dumps(config))
    _relist(artifact_copy, "config.json")
    with pytest.raises(ArtifactError, match="does not match the config's model"):
        load_anyprec(artifact_copy)
    assert main(["generate", str(artifact_copy), "--prompt", "The", "--bits", "3"]) == 2
    assert_short_error(capsys.readouterr().err, "does not match the config's model")
