"""fileio: streamed sha256 and atomic writes (a failed write leaves the old file and no temp file)."""

from __future__ import annotations

import hashlib
import json

import pytest

from anyprec.fileio import atomic_path, sha256_file, write_json_atomic, write_text_atomic


def test_sha256_streams_in_blocks(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10_000)
    assert sha256_file(path, chunk=333) == hashlib.sha256(b"x" * 10_000).hexdigest()


def test_json_is_sorted_and_identical_data_gives_identical_bytes(tmp_path):
    write_json_atomic(tmp_path / "a" / "r.json", {"b": 1, "a": [2]})
    first = (tmp_path / "a" / "r.json").read_bytes()
    write_json_atomic(tmp_path / "a" / "r.json", {"a": [2], "b": 1})
    assert (tmp_path / "a" / "r.json").read_bytes() == first
    assert list(json.loads(first)) == ["a", "b"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "t.txt"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as part:
        part.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]
