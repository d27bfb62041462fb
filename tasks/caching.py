"""Cache keys built on content hashes, and the check that a cached output is still on disk.

A stage's key is the sha256 of its task name and version and of the *content identity* of
each input: the base model's sha256 (`anyprec.models.hash_model_dir`), the calibration
set's sha256, the key/digest of upstream stage outputs, and the canonical JSON of the
params sections it reads. File names, paths and timestamps never enter the key, so a
moved or re-cloned checkout with the same inputs is a cache hit, and changing only the
`evaluation` section leaves every quantization key unchanged.

Prefect keeps the key -> result record under `<results_dir>` (per params file). Because a
result record only says "this was computed once", each stage also records a *stamp* (key +
a stat fingerprint of the output files) next to the records; when the output was deleted or
replaced (rm -rf, `dvc checkout` of another version) the stamp no longer matches and the
task is re-run with `refresh_cache=True`, which overwrites the stale record. Outputs are
never deleted here: the core resumes per-layer work from the files it finds.
"""

from __future__ import annotations

import hashlib
import json
import os
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from anyprec.config import config_hash
from anyprec.fileio import write_json_atomic
from anyprec.stages import BaseModelRef

# Parameters that say where a result goes, not what it is: kept out of the key.
LOCATION_PARAMETERS = frozenset({"out"})


class BaseModelInfo(BaseModel):
    """A resolved base model: registry name, local HF directory and content sha256."""

    name: str
    location: str
    sha256: str

    def identity(self) -> str:
        return self.sha256

    def ref(self) -> BaseModelRef:
        """The library's view of the same model (anyprec.stages)."""
        return BaseModelRef(name=self.name, path=self.location, sha256=self.sha256)


class StageOutput(BaseModel):
    """What a stage produced: its folder or file and a digest identifying the content."""

    stage: str
    path: str
    digest: str

    def identity(self) -> str:
        return self.digest


def identity(value: Any) -> Any:
    """The JSON-able content identity of one task parameter (see module docstring)."""
    if hasattr(value, "identity"):
        return value.identity()
    if isinstance(value, BaseModel):
        return config_hash(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): identity(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [identity(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    raise TypeError(
        f"cannot derive a cache identity from {type(value).__name__}: pass a BaseModelInfo, "
        "StageOutput, pydantic config or plain JSON value to pipeline tasks"
    )


def stage_key(task_name: str, version: str | None, parameters: dict[str, Any]) -> str:
    """sha256 of the task name, version and the identities of its non-location parameters."""
    payload = {
        "task": task_name,
        "version": version,
        "inputs": {k: identity(v) for k, v in sorted(parameters.items()) if k not in LOCATION_PARAMETERS},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def content_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """Prefect `cache_key_fn`: the stage key of the running task."""
    return stage_key(context.task.name, context.task.version, parameters)


# Task options of every cached stage task (bump a task's version when its output changes).
CACHED = {"cache_key_fn": content_cache_key, "persist_result": True, "version": "1"}


def fingerprint(path: str | Path) -> list[list[Any]] | None:
    """[relative path, size, mtime_ns] of every file under path (or of the file); None if missing.

    Stat only, so checking a multi-GB artifact costs milliseconds.
    """
    path = Path(path)
    if path.is_file():
        stat = path.stat()
        return [[path.name, stat.st_size, stat.st_mtime_ns]]
    if not path.is_dir():
        return None
    rows = []
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            file = Path(dirpath) / name
            stat = file.stat()
            rows.append([file.relative_to(path).as_posix(), stat.st_size, stat.st_mtime_ns])
    return sorted(rows) or None


def stamp_file(results_dir: Path, out: Path) -> Path:
    """Where the stamp of output `out` lives (under the results folder, never inside `out`)."""
    name = hashlib.sha256(str(Path(out).resolve()).encode()).hexdigest()[:24]
    return Path(results_dir) / "stamps" / f"{name}.json"


def is_current(results_dir: Path, out: Path, key: str) -> bool:
    """True when `out` still holds exactly what the run with cache key `key` wrote."""
    try:
        stamp = json.loads(stamp_file(results_dir, out).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return stamp.get("key") == key and stamp.get("files") == fingerprint(out)


def write_stamp(results_dir: Path, out: Path, key: str) -> None:
    """Record that `out` now holds the result of `key` (atomic replace)."""
    write_json_atomic(stamp_file(results_dir, out), {"key": key, "out": str(out), "files": fingerprint(out)})


def current_stamps(results_dir: Path, outs: list[Path]) -> dict[Path, str]:
    """{out: key} for every output whose stamp still matches it on disk."""
    keys: dict[Path, str] = {}
    for out in outs:
        try:
            key = json.loads(stamp_file(results_dir, out).read_text()).get("key")
        except (FileNotFoundError, json.JSONDecodeError):
            continue
        if key and is_current(results_dir, out, key):
            keys[out] = key
    return keys


def restamp(results_dir: Path, keys: dict[Path, str]) -> None:
    """Re-stamp outputs whose bytes a tool rewrote without changing them (dvc commit relinks files)."""
    for out, key in keys.items():
        if Path(out).exists():
            write_stamp(results_dir, out, key)

