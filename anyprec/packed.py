"""The packed artifact: one directory holding every bit-width from seed to parent.

Layout (format version 2; docs/DESIGN.md, docs/SCALE.md):
    manifest.json           written last; names every file with its sha256 and size, and each
                            module's shard
    quantized-KKKKK-of-NNNNN.safetensors   one per decoder layer: "<module>.planes"
                            int32[parent, N, ceil(K/32)], "<module>.lut<b>" float16[N, 2**b]
    dense.safetensors       every other tensor of the model (fp16, or fp32 where fp16 would overflow)
    config.json, generation_config.json, tokenizer files

Version 1 (every module in one quantized.safetensors, as written before) still loads.
Only safetensors and JSON are ever read: nothing is unpickled. The manifest's schema and the
checks made before any tensor is read live in anyprec.manifest; an output folder is replaced
only when it is exactly one of our artifacts (`check_replaceable`).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from anyprec import resident
from anyprec.errors import OutputError
from anyprec.fileio import (
    TEMP_MARKER,
    make_temp_dir,
    mark_temp_dir,
    remove_orphan_temp_dirs,
    save_tensors,
    sha256_file,
    write_json_atomic,
)
from anyprec.manifest import (  # the format's names stay importable from here, where they always were
    DENSE_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    QUANTIZED_FILE,
    ArtifactError,
    Manifest,
    artifact_file,
    check_quantized_header,
    parse_manifest,
    read_safetensors_header,
    shard_name,
)

PLANE_LAYOUT = {
    "dtype": "int32 (bit-for-bit uint32)",
    "shape": "[parent_bits, out_features, ceil(in_features / 32)]",
    "plane_order": "msb-first: plane 0 is the most significant bit of the parent code",
    "bit_order": "column k of a row is bit k % 32 (lsb first) of word k // 32; padding bits are 0",
}
_FP16_MAX = 65504.0
DEFAULT_LUTS = resident.DEFAULT_LUTS


@dataclass(frozen=True)
class QuantizedModule:
    """One quantized Linear: packed parent codes and one LUT per bit-width.

    planes: int32[parent, N, ceil(K/32)]; luts: {b: float[N, 2**b]}; bias: float[N] or None.
    """

    planes: torch.Tensor
    luts: dict[int, torch.Tensor]
    in_features: int
    bias: torch.Tensor | None = None
    conv1d: bool = False


def _dense_tensors(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Deduplicate shared storage (tied embeddings) and pick fp16 unless it would overflow."""
    out: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple], str] = {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:
            tied[name] = seen[key]
            continue
        seen[key] = name
        t = t.detach().cpu()
        if t.is_floating_point():
            fits = t.numel() == 0 or float(t.abs().max()) <= _FP16_MAX
            t = t.to(torch.float16 if fits else torch.float32)
        out[name] = t.contiguous()
    return out, tied


class PackedWriter:
    """Writes an artifact (format version 2) one decoder layer at a time.

    Use as a context manager: `add_layer` packs a layer's modules into the next shard
    `quantized-KKKKK-of-NNNNN.safetensors` and hashes it, so only that layer's codes are in
    memory; `finish` writes the dense tensors, config, tokenizer and manifest (last) into the
    temp folder and renames it into place. Leaving the block without `finish` (an error, a
    kill) removes the temp folder; a killed process leaves only a `.tmp-*` folder, which never
    loads as an artifact.
    """

    def __init__(self, out_dir: str | Path, n_shards: int, seed_bits: int, parent_bits: int):
        self.out_dir, self.n_shards = Path(out_dir), n_shards
        self.seed_bits, self.parent_bits = seed_bits, parent_bits
        self.module_meta: dict[str, Any] = {}
        self.shards: dict[str, str] = {}
        self.files: dict[str, dict[str, Any]] = {}
        self.tmp: Path | None = None

    def __enter__(self) -> "PackedWriter":
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        check_replaceable(self.out_dir)
        remove_orphan_temp_dirs(self.out_dir)
        self.tmp = make_temp_dir(self.out_dir)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.tmp is not None and self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _record(self, path: Path) -> None:
        self.files[path.name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}

    def add_layer(self, modules: dict[str, QuantizedModule]) -> None:
        """Write the next shard: "<m>.planes" int32[parent, N, ceil(K/32)], "<m>.lut<b>" float16[N, 2**b]."""
        assert self.tmp is not None, "use PackedWriter as a context manager"
        index = len(set(self.shards.values()))
        if index >= self.n_shards:
            raise ValueError(f"more layers than the {self.n_shards} shards announced")
        shard = shard_name(index, self.n_shards)
        tensors: dict[str, torch.Tensor] = {}
        for name, qm in modules.items():
            if qm.planes.shape[0] != self.parent_bits:
                raise ValueError(f"{name}: {qm.planes.shape[0]} planes, expected parent_bits={self.parent_bits}")
            tensors[f"{name}.planes"] = qm.planes.to(torch.int32).contiguous()
            for b in range(self.seed_bits, self.parent_bits + 1):
                tensors[f"{name}.lut{b}"] = qm.luts[b].to(torch.float16).contiguous()
            self.module_meta[name] = {"out_features": int(qm.planes.shape[1]), "in_features": int(qm.in_features),
                                      "bias": qm.bias is not None, "conv1d": bool(qm.conv1d)}
            self.shards[name] = shard
        save_tensors(tensors, self.tmp / shard, metadata={"format": FORMAT_NAME})
        self._record(self.tmp / shard)

    def finish(self, config: Any, generation_config: Any, tokenizer: Any, state: dict[str, torch.Tensor],
               inputs: dict[str, Any], extra: dict[str, Any] | None = None,
               json_files: dict[str, Any] | None = None) -> Path:
        """Write everything else and move the artifact into place; returns its folder.

        `state`: the model's tensors by state-dict name; the quantized modules' weights are
        skipped, tied aliases (the same tensor object) are recorded in `tied`. `json_files`
        ({flat file name: JSON value}) are written beside the tensors and hashed like them.
        """
        assert self.tmp is not None, "use PackedWriter as a context manager"
        written = len(set(self.shards.values()))
        if written != self.n_shards:
            raise ValueError(f"{written} layers written, {self.n_shards} shards announced")
        skip = {f"{n}.weight" for n in self.module_meta}
        dense, tied = _dense_tensors({k: v for k, v in state.items() if k not in skip})
        save_tensors(dense, self.tmp / DENSE_FILE, metadata={"format": FORMAT_NAME})
        config.save_pretrained(self.tmp)
        if generation_config is not None:
            generation_config.save_pretrained(self.tmp)
        tokenizer.save_pretrained(self.tmp)
        for file_name, value in (json_files or {}).items():
            write_json_atomic(self.tmp / file_name, value)
        for path in sorted(self.tmp.iterdir()):
            if path.is_file() and path.name not in self.files and path.name != TEMP_MARKER:
                self._record(path)
        manifest = {
            "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            "seed_bits": self.seed_bits, "parent_bits": self.parent_bits,
            "plane_layout": PLANE_LAYOUT, "lut_dtype": "float16", "model_type": config.model_type,
            "modules": self.module_meta, "shards": self.shards, "tied": tied,
            "files": dict(sorted(self.files.items())), "inputs": inputs, **(extra or {}),
        }
        write_json_atomic(self.tmp / MANIFEST, manifest)
        _replace_dir(self.tmp, self.out_dir)
        return self.out_dir


def foreign_entries(path: Path) -> list[str] | None:
    """Entries of `path` that its manifest does not list (None: `path` holds no valid manifest).

    An empty list means the folder is exactly an artifact this tool wrote, so it may be replaced.
    """
    try:
        listed = set(read_manifest(path)["files"])
    except ArtifactError:
        return None
    return sorted(p.name for p in path.iterdir() if p.name not in listed | {MANIFEST, TEMP_MARKER})


def check_replaceable(out_dir: Path) -> None:
    """Refuse an output folder whose contents the tool did not create (only absent, empty, or
    exactly one of our artifacts may be replaced) or that is a mount point (cannot be swapped)."""
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if out_dir.is_symlink() or not out_dir.is_dir():
        raise OutputError(f"--out {out_dir} exists and is not a folder; choose a new folder name")
    if os.path.ismount(out_dir):
        raise OutputError(f"--out {out_dir} is a mount point, which cannot be replaced; choose a folder inside it")
    if not any(out_dir.iterdir()):
        return
    foreign = foreign_entries(out_dir)
    if foreign is None:
        raise OutputError(
            f"--out {out_dir} is a non-empty folder that is not an anyprec artifact; nothing was "
            "changed: choose a new or empty folder"
        )
    if foreign:
        raise OutputError(
            f"--out {out_dir} holds files that are not part of its artifact ({', '.join(foreign[:3])}); "
            "nothing was changed: move them out or choose another folder"
        )


def _replace_dir(src: Path, dst: Path) -> None:
    """Move `src` to `dst`; an existing `dst` (checked replaceable) is swapped out and removed."""
    (src / TEMP_MARKER).unlink(missing_ok=True)
    if dst.exists():
        check_replaceable(dst)
        mark_temp_dir(dst)  # so that a kill before the removal below leaves a folder we may clean
        old = dst.parent / f".{dst.name}.old-{src.name.rsplit('-', 1)[-1]}"
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def read_manifest(artifact_dir: str | Path) -> dict[str, Any]:
    """Read manifest.json and validate every field (`anyprec.manifest.Manifest`); does not hash files.

    Returns the manifest as a plain dict (extra keys kept).
    """
    return load_manifest(artifact_dir).model_dump()


def load_manifest(artifact_dir: str | Path) -> Manifest:
    """The validated manifest of `artifact_dir`; any problem is one ArtifactError."""
    artifact_dir = Path(artifact_dir)
    path = artifact_dir / MANIFEST
    if not path.is_file():
        raise ArtifactError(
            f"{artifact_dir} is not an anyprec artifact: {MANIFEST} is missing "
            "(an interrupted write leaves no manifest; re-run `anyprec quantize`)"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{path} is not valid JSON ({err}); re-run `anyprec quantize`") from None
    if isinstance(raw, dict) and raw.get("format") != FORMAT_NAME:
        raise ArtifactError(f"{path}: format is {raw.get('format')!r}, expected {FORMAT_NAME!r}")
    return parse_manifest(raw, path)


def check_listed(artifact_dir: Path, manifest: dict[str, Any]) -> None:
    """Refuse entries the manifest does not list: config and tokenizer loading read the folder,
    so an unlisted file there would be read without a hash check."""
    foreign = sorted(
        p.name for p in artifact_dir.iterdir() if p.name not in set(manifest["files"]) | {MANIFEST, TEMP_MARKER}
    )
    if foreign:
        raise ArtifactError(
            f"{artifact_dir} holds {', '.join(foreign[:3])}, not listed in {MANIFEST}; only listed, "
            "hash-checked files are read: move it out of the artifact folder"
        )


def verify_files(artifact_dir: str | Path, manifest: dict[str, Any], hashes: bool = True) -> None:
    """Check every file named in the manifest exists inside the folder with the recorded size
    and (unless `hashes` is False) sha256."""
    artifact_dir = Path(artifact_dir)
    check_listed(artifact_dir, manifest)
    for name, meta in manifest["files"].items():
        path = artifact_file(artifact_dir, name)
        size = path.stat().st_size
        if size != meta["bytes"]:
            raise ArtifactError(
                f"{path} has {size} bytes, the manifest says {meta['bytes']}: the file is truncated or "
                "altered; restore it (e.g. `dvc pull`) or re-run `anyprec quantize`"
            )
        if hashes and sha256_file(path) != meta["sha256"]:
            raise ArtifactError(
                f"{path} does not match its sha256 in {MANIFEST}: the file is altered or corrupt; "
                "restore it (e.g. `dvc pull`) or re-run `anyprec quantize`"
            )


def check_no_remote_code(artifact_dir: Path, manifest: dict[str, Any]) -> None:
    """Refuse an artifact whose config or tokenizer config asks transformers for custom code
    (`auto_map`): no code from an artifact is ever run, so such a file is an error, not a prompt."""
    for name in ("config.json", "tokenizer_config.json"):
        if name not in manifest["files"]:
            continue
        try:
            data = json.loads(artifact_file(artifact_dir, name).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ArtifactError(f"{artifact_dir / name} is not valid JSON; re-run `anyprec quantize`") from None
        if isinstance(data, dict) and "auto_map" in data:
            raise ArtifactError(
                f"{artifact_dir / name} asks for custom model code (auto_map); anyprec never runs code "
                "from an artifact: re-quantize the model with `anyprec quantize`"
            )


def check_headers(artifact_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Every tensor file's header is sound and each quantized file holds its modules as declared."""
    artifact_dir = Path(artifact_dir)
    parsed = Manifest.model_validate(manifest)
    for file_name, names in parsed.quantized_files().items():
        check_quantized_header(artifact_file(artifact_dir, file_name), parsed, names)
    read_safetensors_header(artifact_file(artifact_dir, DENSE_FILE))


def check_bits(manifest: dict[str, Any], bits: list[int]) -> list[int]:
    """Sorted unique bit-widths, each within [seed_bits, parent_bits] of the artifact."""
    lo, hi = manifest["seed_bits"], manifest["parent_bits"]
    wanted = sorted(set(int(b) for b in bits))
    bad = [b for b in wanted if not lo <= b <= hi]
    if bad or not wanted:
        raise ArtifactError(
            f"bit-width(s) {bad or bits} not in this artifact: it holds {lo}..{hi} bits "
            f"(choose --bits from {list(range(lo, hi + 1))})"
        )
    return wanted


def load_packed_tensors(
    artifact_dir: str | Path, bits: list[int] | None = None, verify: bool = True
) -> tuple[dict[str, Any], dict[str, QuantizedModule], dict[str, torch.Tensor]]:
    """Load (manifest, quantized modules, dense tensors) keeping only what `bits` needs.

    Planes 0..max(bits)-1 and the LUTs of `bits` are read (safetensors slices); nothing else.
    """
    artifact_dir = Path(artifact_dir)
    manifest = read_manifest(artifact_dir)
    wanted = check_bits(manifest, bits or list(range(manifest["seed_bits"], manifest["parent_bits"] + 1)))
    if verify:
        verify_files(artifact_dir, manifest)
    else:
        check_listed(artifact_dir, manifest)
    check_no_remote_code(artifact_dir, manifest)
    check_headers(artifact_dir, manifest)
    top = max(wanted)
    with safe_open(artifact_file(artifact_dir, DENSE_FILE), framework="pt") as df:
        dense = {k: df.get_tensor(k) for k in df.keys()}
    modules: dict[str, QuantizedModule] = {}
    # one quantized file mapped at a time (a shard per layer in version 2), closed before the next
    for file_name, names in Manifest.model_validate(manifest).quantized_files().items():
        with safe_open(artifact_file(artifact_dir, file_name), framework="pt") as qf:
            for name in names:
                meta = manifest["modules"][name]
                # a copy: a view would keep all parent planes and the mapped file resident
                planes = qf.get_slice(f"{name}.planes")[:top].clone(memory_format=torch.contiguous_format)
                luts = {b: qf.get_tensor(f"{name}.lut{b}") for b in wanted}
                bias = dense.pop(f"{name}.bias", None)
                modules[name] = QuantizedModule(planes, luts, meta["in_features"], bias, meta["conv1d"])
    return manifest, modules, dense


def artifact_sizes(artifact_dir: str | Path, luts: str = DEFAULT_LUTS) -> dict[str, Any]:
    """Bytes of the artifact split into codes, LUTs and dense tensors, per bit-width and total.

    `per_bits[b]` is what a b-bit-only load holds in memory in form `luts` (anyprec.resident:
    "u8", the default load, or "fp16"); `artifact` every width together in that form;
    `separate_sum` what separately packed b-bit models would weigh together; `fp16_model`
    the unquantized model in fp16; `files_on_disk` the files as stored.
    """
    artifact_dir = Path(artifact_dir)
    manifest = read_manifest(artifact_dir)
    seed, parent = manifest["seed_bits"], manifest["parent_bits"]
    header = read_safetensors_header(artifact_file(artifact_dir, DENSE_FILE))
    dense = resident.dense_bytes(header, manifest, luts)
    q_params = 0
    plane_bytes_per_bit = 0
    lut_bytes = {b: 0 for b in range(seed, parent + 1)}
    for meta in manifest["modules"].values():
        n, k = meta["out_features"], meta["in_features"]
        q_params += n * k
        plane_bytes_per_bit += n * ((k + 31) // 32) * 4
        for b in lut_bytes:
            lut_bytes[b] += resident.lut_bytes(n, b, luts)
    per_bits = {
        b: {
            "codes": plane_bytes_per_bit * b,
            "luts": lut_bytes[b],
            "dense": dense,
            "total": plane_bytes_per_bit * b + lut_bytes[b] + dense,
        }
        for b in lut_bytes
    }
    codes_all = plane_bytes_per_bit * parent
    luts_all = sum(lut_bytes.values())
    return {
        "form": luts,
        "seed_bits": seed,
        "parent_bits": parent,
        "quantized_params": q_params,
        "per_bits": per_bits,
        "artifact": {
            "codes": codes_all,
            "luts": luts_all,
            "dense": dense,
            "total": codes_all + luts_all + dense,
        },
        "files_on_disk": sum(m["bytes"] for m in manifest["files"].values()),
        "separate_sum": sum(v["total"] for v in per_bits.values()),
        "fp16_model": q_params * 2 + resident.dense_bytes(header, manifest, "fp16"),
    }
