"""Small file helpers shared by the library: streamed sha256, atomic writes, our temp folders.

Every file is written under a temporary name and renamed into place, with the permissions
the user's umask gives a new file (safetensors alone would leave 0600).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

# Marks a temp folder as ours, with the process that made it, so a later run may remove it
# once that process is gone, and never a folder of anyone else.
TEMP_MARKER = ".anyprec-temp.json"


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """sha256 hex digest of a file, streamed in `chunk`-byte blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def current_umask() -> int:
    """The process umask (read by setting and restoring it; no other thread writes files here)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: str | Path) -> None:
    """Give a file the mode a plain `open(path, "w")` would: 0666 minus the umask."""
    os.chmod(path, 0o666 & ~current_umask())


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp path next to `path` for any writer; renamed onto `path` when the block succeeds,
    removed when it raises, so `path` is never seen half-written. The temp name is the writer's
    own (process and thread): two threads writing one file each rename a whole file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f"{path.name}.part-{os.getpid()}-{threading.get_ident()}")
    try:
        yield part
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


def save_tensors(tensors: dict[str, Any], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors `save_file` with the umask's mode; a Rust I/O error becomes an OSError."""
    from safetensors.torch import save_file

    from anyprec.errors import oserror_from_rust

    try:
        save_file(tensors, str(path), metadata=metadata)
    except OSError:
        raise
    except Exception as err:  # safetensors reports I/O failures as SafetensorError("... (os error N)")
        converted = oserror_from_rust(err, path)
        if converted is None:
            raise
        raise converted from err
    apply_umask(path)


def save_tensors_atomic(tensors: dict[str, Any], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """`save_tensors` to a temp name renamed into place; a failed write leaves nothing behind."""
    with atomic_path(path) as part:
        save_tensors(tensors, part, metadata)


def saved_key(path: str | Path) -> str | None:
    """The metadata "key" a safetensors file was saved with (the inputs it was computed for), or
    None when the file is absent or unreadable: a torn or foreign file counts as not done."""
    from safetensors import safe_open

    if not Path(path).is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("key")
    except Exception:
        return None


def make_temp_dir(target: Path, kind: str = "tmp") -> Path:
    """A new marked folder `.NAME.KIND-XXXXXXXX` beside `target`, made with the umask's mode."""
    path = target.parent / f".{target.name}.{kind}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    mark_temp_dir(path)
    return path


def mark_temp_dir(path: Path) -> None:
    """Write our marker (host, pid) into `path`, claiming it as a temp folder of this process."""
    (path / TEMP_MARKER).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}), encoding="utf-8")


def _owner_gone(marker: Path) -> bool:
    try:
        owner = json.loads(marker.read_text(encoding="utf-8"))
        host, pid = owner["host"], int(owner["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if host != socket.gethostname():
        return False  # another machine's process: we cannot tell whether it still runs
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def remove_orphan_temp_dirs(target: Path) -> list[Path]:
    """Remove `.NAME.tmp-*` / `.NAME.old-*` folders beside `target` that carry our marker and
    whose process has ended (a killed run's leftovers). Returns the removed paths."""
    removed = []
    for kind in ("tmp", "old"):
        for path in sorted(target.parent.glob(f".{target.name}.{kind}-*")):
            marker = path / TEMP_MARKER
            if path.is_dir() and not path.is_symlink() and marker.is_file() and _owner_gone(marker):
                shutil.rmtree(path)
                removed.append(path)
    return removed
def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) via a temp file + rename: readers never see a torn file."""
    with atomic_path(path) as part:
        part.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write `data` as indented JSON with sorted keys, atomically (identical data, identical bytes)."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
