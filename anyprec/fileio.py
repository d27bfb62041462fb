"""Small file helpers shared by the library: streamed sha256 and atomic text / JSON writes."""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """sha256 hex digest of a file, streamed in `chunk`-byte blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp path next to `path` for any writer; renamed onto `path` when the block succeeds,
    removed when it raises, so `path` is never seen half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f"{path.name}.part-{os.getpid()}")
    try:
        yield part
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) via a temp file + rename: readers never see a torn file."""
    with atomic_path(path) as part:
        part.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write `data` as indented JSON with sorted keys, atomically (identical data, identical bytes)."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
