"""The packed artifact: one directory holding every bit-width from seed to parent.

Layout (format version 1, see docs/DESIGN.md):
    manifest.json           written last; names every file with its sha256 and size
    quantized.safetensors   "<module>.planes" int32[parent, N, ceil(K/32)], "<module>.lut<b>" float16[N, 2**b]
    dense.safetensors       every other tensor of the model (fp16, or fp32 where fp16 would overflow)
    config.json, generation_config.json, tokenizer files

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
)

PLANE_LAYOUT = {
    "dtype": "int32 (bit-for-bit uint32)",
    "shape": "[parent_bits, out_features, ceil(in_features / 32)]",
    "plane_order": "msb-first: plane 0 is the most significant bit of the parent code",
    "bit_order": "column k of a row is bit k % 32 (lsb first) of word k // 32; padding bits are 0",
}
_FP16_MAX = 65504.0


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


def save_packed(
    out_dir: str | Path,
    model: torch.nn.Module,
    tokenizer: Any,
    modules: dict[str, QuantizedModule],
    seed_bits: int,
    parent_bits: int,
    inputs: dict[str, Any],
    extra: dict[str, Any] | None = None,
    json_files: dict[str, Any] | None = None,
) -> Path:
    """Write the artifact atomically: a temp directory renamed into place, manifest last.

    `model` supplies config and dense tensors (its quantized weights are skipped: the names in
    `modules` + ".weight" / ".bias"). An interrupted write leaves only a `.tmp-*` directory,
    which never loads as an artifact. `json_files` ({flat file name: JSON value}) are written
    beside the tensors and hashed in the manifest like them.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    check_replaceable(out_dir)
    remove_orphan_temp_dirs(out_dir)
    tmp = make_temp_dir(out_dir)
    try:
        quantized: dict[str, torch.Tensor] = {}
        module_meta: dict[str, Any] = {}
        for name, qm in modules.items():
            if qm.planes.shape[0] != parent_bits:
                raise ValueError(f"{name}: {qm.planes.shape[0]} planes, expected parent_bits={parent_bits}")
            quantized[f"{name}.planes"] = qm.planes.to(torch.int32).contiguous()
            for b in range(seed_bits, parent_bits + 1):
                quantized[f"{name}.lut{b}"] = qm.luts[b].to(torch.float16).contiguous()
            module_meta[name] = {
                "out_features": int(qm.planes.shape[1]),
                "in_features": int(qm.in_features),
                "bias": qm.bias is not None,
                "conv1d": bool(qm.conv1d),
            }
        skip = {f"{n}.weight" for n in modules}
        state = {k: v for k, v in model.state_dict().items() if k not in skip}
        dense, tied = _dense_tensors(state)
        save_tensors(quantized, tmp / QUANTIZED_FILE, metadata={"format": FORMAT_NAME})
        save_tensors(dense, tmp / DENSE_FILE, metadata={"format": FORMAT_NAME})
        model.config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for file_name, value in (json_files or {}).items():
            write_json_atomic(tmp / file_name, value)
        files = {
            p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(tmp.iterdir())
            if p.is_file() and p.name != TEMP_MARKER
        }
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "seed_bits": seed_bits,
            "parent_bits": parent_bits,
            "plane_layout": PLANE_LAYOUT,
            "lut_dtype": "float16",
            "model_type": model.config.model_type,
            "modules": module_meta,
            "tied": tied,
            "files": files,
            "inputs": inputs,
            **(extra or {}),
        }
        write_json_atomic(tmp / MANIFEST, manifest)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


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
    """Both tensor files' headers are sound and the quantized one matches the manifest's modules."""
    artifact_dir = Path(artifact_dir)
    check_quantized_header(artifact_file(artifact_dir, QUANTIZED_FILE), Manifest.model_validate(manifest))
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
    modules: dict[str, QuantizedModule] = {}
    with safe_open(artifact_file(artifact_dir, QUANTIZED_FILE), framework="pt") as qf, safe_open(
        artifact_file(artifact_dir, DENSE_FILE), framework="pt"
    ) as df:
        dense = {k: df.get_tensor(k) for k in df.keys()}
        for name, meta in manifest["modules"].items():
            planes = qf.get_slice(f"{name}.planes")[:top].contiguous()
            luts = {b: qf.get_tensor(f"{name}.lut{b}") for b in wanted}
            bias = dense.pop(f"{name}.bias", None)
            modules[name] = QuantizedModule(planes, luts, meta["in_features"], bias, meta["conv1d"])
    return manifest, modules, dense


def artifact_sizes(artifact_dir: str | Path) -> dict[str, Any]:
    """Bytes of the artifact split into codes, LUTs and dense tensors, per bit-width and total.

    `per_bits[b]` is what a b-bit-only load keeps in memory; `separate_sum` is what separately
    packed b-bit models would weigh together; `fp16_model` is the unquantized model in fp16.
    """
    artifact_dir = Path(artifact_dir)
    manifest = read_manifest(artifact_dir)
    seed, parent = manifest["seed_bits"], manifest["parent_bits"]
    dense_bytes = _tensor_bytes(artifact_file(artifact_dir, DENSE_FILE))
    q_params = 0
    plane_bytes_per_bit = 0
    lut_bytes = {b: 0 for b in range(seed, parent + 1)}
    for meta in manifest["modules"].values():
        n, k = meta["out_features"], meta["in_features"]
        q_params += n * k
        plane_bytes_per_bit += n * ((k + 31) // 32) * 4
        for b in lut_bytes:
            lut_bytes[b] += n * (2**b) * 2
    per_bits = {
        b: {
            "codes": plane_bytes_per_bit * b,
            "luts": lut_bytes[b],
            "dense": dense_bytes,
            "total": plane_bytes_per_bit * b + lut_bytes[b] + dense_bytes,
        }
        for b in lut_bytes
    }
    codes_all = plane_bytes_per_bit * parent
    luts_all = sum(lut_bytes.values())
    return {
        "seed_bits": seed,
        "parent_bits": parent,
        "quantized_params": q_params,
        "per_bits": per_bits,
        "artifact": {
            "codes": codes_all,
            "luts": luts_all,
            "dense": dense_bytes,
            "total": codes_all + luts_all + dense_bytes,
        },
        "files_on_disk": sum(m["bytes"] for m in manifest["files"].values()),
        "separate_sum": sum(v["total"] for v in per_bits.values()),
        "fp16_model": q_params * 2 + dense_bytes,
    }


def _tensor_bytes(path: Path) -> int:
    """Bytes of a safetensors file's tensors, from its checked header (no tensor is read)."""
    header = read_safetensors_header(path)
    return sum(end - start for start, end in (e["data_offsets"] for e in header.values()))
