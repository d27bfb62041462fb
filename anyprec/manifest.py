"""The schema of manifest.json and the checks a loader makes before reading any tensor.

One pydantic model validates every field (a missing or ill-typed field is one clear error);
file names must be plain names inside the artifact folder; a safetensors header is read by
hand (8-byte little-endian length + JSON, bounded) and compared with the module shapes the
manifest declares before anything is allocated.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from anyprec.errors import AnyprecError

FORMAT_NAME = "anyprec"
FORMAT_VERSION = 2  # what the writer writes
READABLE_VERSIONS = (1, 2)  # 1: every module in QUANTIZED_FILE; 2: one shard per decoder layer
MANIFEST = "manifest.json"
QUANTIZED_FILE = "quantized.safetensors"
DENSE_FILE = "dense.safetensors"
CONFIG_FILE = "config.json"
REQUIRED_FILES = (DENSE_FILE, CONFIG_FILE)
SHARD_PATTERN = re.compile(r"^quantized-(\d{5})-of-(\d{5})\.safetensors$")
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit; a larger claim is a damaged file
DAMAGED = "the file is damaged: restore it (e.g. `dvc pull`) or re-run `anyprec quantize`"
DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I32": 4, "I64": 8, "U8": 1, "I8": 1, "BOOL": 1, "I16": 2}


class ArtifactError(AnyprecError, ValueError):
    """A packed artifact is missing, damaged, or asked for something it does not hold."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class FileEntry(_Model):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class ModuleEntry(_Model):
    out_features: int = Field(ge=1, le=2**24)
    in_features: int = Field(ge=1, le=2**24)
    bias: bool
    conv1d: bool


class Manifest(BaseModel):
    """manifest.json, format version 1 or 2 (docs/DESIGN.md, docs/SCALE.md). Unknown extra keys are kept.

    Version 1 keeps every module's planes and LUTs in QUANTIZED_FILE; version 2 in shards
    `quantized-KKKKK-of-NNNNN.safetensors`, `shards` naming each module's one.
    """

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)

    format: Literal["anyprec"]
    format_version: Literal[1, 2]
    seed_bits: int = Field(ge=1, le=8)
    parent_bits: int = Field(ge=1, le=8)
    lut_dtype: Literal["float16"]
    model_type: str
    modules: dict[str, ModuleEntry] = Field(min_length=1)
    tied: dict[str, str] = Field(default_factory=dict)
    files: dict[str, FileEntry]
    inputs: dict[str, Any]
    shards: dict[str, str] = Field(default_factory=dict)

    @field_validator("files")
    @classmethod
    def _plain_names(cls, files: dict[str, FileEntry]) -> dict[str, FileEntry]:
        for name in files:
            check_plain_name(name)
        missing = [name for name in REQUIRED_FILES if name not in files]
        if missing:
            raise ValueError(f"no entry for the required file(s) {missing}")
        return files

    @model_validator(mode="after")
    def _bits_order(self) -> "Manifest":
        if self.seed_bits > self.parent_bits:
            raise ValueError(f"seed_bits={self.seed_bits} > parent_bits={self.parent_bits}")
        return self

    @model_validator(mode="after")
    def _quantized_files(self) -> "Manifest":
        if self.format_version == 1:
            if QUANTIZED_FILE not in self.files:
                raise ValueError(f"no entry for the required file(s) {[QUANTIZED_FILE]}")
            if self.shards:
                raise ValueError("format_version 1 has no shards; version 2 names them")
            return self
        unmapped = sorted(set(self.modules) - set(self.shards))
        if unmapped or set(self.shards) - set(self.modules):
            raise ValueError(f"shards must name the shard of every module and no other: {unmapped[:3]} unmapped")
        bad = sorted({f for f in self.shards.values() if not SHARD_PATTERN.match(f) or f not in self.files})
        if bad:
            raise ValueError(f"shard file(s) {bad[:3]} are not quantized-KKKKK-of-NNNNN.safetensors listed in files")
        return self

    def quantized_files(self) -> dict[str, list[str]]:
        """{tensor file: the modules it holds, in manifest order}."""
        if self.format_version == 1:
            return {QUANTIZED_FILE: list(self.modules)}
        out: dict[str, list[str]] = {}
        for name in self.modules:
            out.setdefault(self.shards[name], []).append(name)
        return out


def shard_name(index: int, count: int) -> str:
    """File name of quantized shard `index` (0-based) of `count`: quantized-00001-of-000NN.safetensors."""
    return f"quantized-{index + 1:05d}-of-{count:05d}.safetensors"


def check_plain_name(name: str) -> str:
    """A file name the loader may open: no separator, no '..', not absolute, not hidden-empty."""
    if not name or name in {".", ".."} or "/" in name or "\\" in name or "\0" in name or name == MANIFEST:
        raise ValueError(f"file name {name!r} is not a plain file name inside the artifact folder")
    return name


def parse_manifest(raw: Any, path: Path) -> Manifest:
    """Validate the decoded JSON of manifest.json; any problem is one ArtifactError naming the field."""
    if isinstance(raw, dict) and raw.get("format") == FORMAT_NAME and raw.get("format_version") not in READABLE_VERSIONS:
        raise ArtifactError(
            f"{path}: unknown format_version {raw.get('format_version')!r}; this anyprec reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}. Upgrade anyprec or re-quantize the model with this version."
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        raise ArtifactError(
            f"{path}: field {field!r}: {first['msg']}{more}; the manifest is damaged or not ours: "
            "restore the artifact (e.g. `dvc pull`) or re-run `anyprec quantize`"
        ) from None


def artifact_file(artifact_dir: Path, name: str) -> Path:
    """The path of a manifest-listed file, refused if it is not a regular file inside the folder."""
    check_plain_name(name)
    path = artifact_dir / name
    if path.is_symlink() and not path.resolve().is_relative_to(artifact_dir.resolve()):
        raise ArtifactError(f"{path} is a symlink leaving the artifact folder; replace it with the file itself")
    if not path.is_file():
        raise ArtifactError(f"{path} is missing; the artifact is incomplete: re-run `anyprec quantize`")
    return path


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, checked to describe tensors that fit in the file.

    Returns {name: {"dtype", "shape", "data_offsets"}} (the "__metadata__" entry dropped).
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ArtifactError(f"{path} is too short to be a safetensors file ({size} bytes); {DAMAGED}")
        (length,) = struct.unpack("<Q", head)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise ArtifactError(f"{path}: header claims {length:,} bytes in a {size:,}-byte file; {DAMAGED}")
        try:
            header = json.loads(fh.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ArtifactError(f"{path}: the header is not valid JSON; {DAMAGED}") from None
    if not isinstance(header, dict):
        raise ArtifactError(f"{path}: the header is not a JSON object; {DAMAGED}")
    header.pop("__metadata__", None)
    data = size - 8 - length
    for name, entry in header.items():
        _check_entry(path, name, entry, data)
    return header


def _check_entry(path: Path, name: str, entry: Any, data_bytes: int) -> None:
    try:
        dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        ok = dtype in DTYPE_BYTES and all(isinstance(d, int) and d >= 0 for d in shape)
        ok = ok and isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= data_bytes
    except (TypeError, KeyError, ValueError):
        ok = False
    if not ok:
        raise ArtifactError(f"{path}: tensor {name!r} has an invalid header entry; {DAMAGED}")
    numel = 1
    for d in shape:
        numel *= d
    if numel * DTYPE_BYTES[dtype] != end - start:
        raise ArtifactError(
            f"{path}: tensor {name!r} claims shape {shape} ({dtype}) but holds {end - start} bytes; {DAMAGED}"
        )


def check_quantized_header(path: Path, manifest: Manifest, modules: list[str] | None = None) -> None:
    """Every module's (or `modules`') planes and LUTs are in the file at `path` with the dtypes and
    shapes the manifest implies."""
    header = read_safetensors_header(path)
    for name in manifest.modules if modules is None else modules:
        meta = manifest.modules[name]
        expected = {f"{name}.planes": ("I32", [manifest.parent_bits, meta.out_features, (meta.in_features + 31) // 32])}
        for b in range(manifest.seed_bits, manifest.parent_bits + 1):
            expected[f"{name}.lut{b}"] = ("F16", [meta.out_features, 2**b])
        for key, (dtype, shape) in expected.items():
            entry = header.get(key)
            if entry is None:
                raise ArtifactError(f"{path}: tensor {key!r} is missing; re-run `anyprec quantize`")
            if entry["dtype"] != dtype or entry["shape"] != shape:
                raise ArtifactError(
                    f"{path}: tensor {key!r} is {entry['dtype']}{entry['shape']}, the manifest implies "
                    f"{dtype}{shape}; the artifact is damaged: re-run `anyprec quantize`"
                )
