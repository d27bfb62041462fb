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


def test_threads_writing_one_file_each_rename_a_whole_file(tmp_path):
    """Mapped tasks of the thread runner write shared cache files at once; each writer needs
    its own temp name, or one rename finds the other's temp file gone."""
    import threading

    target = tmp_path / "shared.json"
    inside = threading.Barrier(2)
    errors = []

    def write(value: int) -> None:
        try:
            with atomic_path(target) as part:
                part.write_text(str(value))
                inside.wait(timeout=10)  # both writers hold their temp file at once
        except Exception as exc:  # collected: an exception in a thread does not fail the test
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(v,)) for v in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert target.read_text() in {"1", "2"}
    assert list(tmp_path.iterdir()) == [target]
