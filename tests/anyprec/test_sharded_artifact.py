"""Format version 2: one quantized shard per decoder layer, written as packed; version 1 still loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from anyprec.fileio import sha256_file
from anyprec.manifest import MANIFEST, QUANTIZED_FILE, ArtifactError, shard_name
from anyprec.packed import load_packed_tensors, read_manifest


def as_version_1(artifact: Path, dst: Path) -> Path:
    """The same artifact in format version 1: every module in quantized.safetensors, no shards."""
    shutil.copytree(artifact, dst)
    manifest = json.loads((dst / MANIFEST).read_text())
    merged: dict[str, torch.Tensor] = {}
    for shard in sorted(set(manifest.pop("shards").values())):
        merged.update(load_file(str(dst / shard)))
        (dst / shard).unlink()
        del manifest["files"][shard]
    save_file(merged, str(dst / QUANTIZED_FILE), metadata={"format": "anyprec"})
    manifest["files"][QUANTIZED_FILE] = {"sha256": sha256_file(dst / QUANTIZED_FILE),
                                         "bytes": (dst / QUANTIZED_FILE).stat().st_size}
    manifest["format_version"] = 1
    (dst / MANIFEST).write_text(json.dumps(manifest))
    return dst


def test_one_listed_hashed_shard_per_decoder_layer(tiny_artifact):
    manifest = read_manifest(tiny_artifact)
    shards = [shard_name(0, 2), shard_name(1, 2)]
    assert shards == ["quantized-00001-of-00002.safetensors", "quantized-00002-of-00002.safetensors"]
    assert manifest["format_version"] == 2
    assert sorted(set(manifest["shards"].values())) == shards
    for shard in shards:
        assert manifest["files"][shard]["sha256"] == sha256_file(tiny_artifact / shard)
        held = {key.rsplit(".", 1)[0] for key in load_file(str(tiny_artifact / shard))}
        assert held == {name for name, s in manifest["shards"].items() if s == shard}
        layer = shards.index(shard)
        assert all(f".layers.{layer}." in name for name in held)
    assert not (tiny_artifact / QUANTIZED_FILE).exists()


def test_version_1_artifact_loads_the_same_tensors(tiny_artifact, tmp_path):
    v1 = as_version_1(tiny_artifact, tmp_path / "v1")
    manifest1, modules1, dense1 = load_packed_tensors(v1, bits=[3, 6])
    manifest2, modules2, dense2 = load_packed_tensors(tiny_artifact, bits=[3, 6])
    assert manifest1["format_version"] == 1 and manifest2["format_version"] == 2
    assert modules1.keys() == modules2.keys() and dense1.keys() == dense2.keys()
    for name, qm in modules2.items():
        assert torch.equal(modules1[name].planes, qm.planes)
        assert all(torch.equal(modules1[name].luts[b], qm.luts[b]) for b in (3, 6))
    assert all(torch.equal(dense1[k], v) for k, v in dense2.items())


def test_version_1_gives_the_same_logits_through_the_runtime(tiny_artifact, tmp_path):
    from anyprec.runtime import load_anyprec

    v1 = as_version_1(tiny_artifact, tmp_path / "v1")
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        old = load_anyprec(v1, bits=4).model(ids).logits
        new = load_anyprec(tiny_artifact, bits=4).model(ids).logits
    assert torch.equal(old, new)


def test_a_shard_missing_from_files_is_refused(tiny_artifact, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art)
    manifest = json.loads((art / MANIFEST).read_text())
    del manifest["files"][shard_name(1, 2)]
    (art / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="quantized-00002-of-00002.safetensors"):
        read_manifest(art)


def test_a_module_without_a_shard_is_refused(tiny_artifact, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art)
    manifest = json.loads((art / MANIFEST).read_text())
    manifest["shards"].pop(next(iter(manifest["shards"])))
    (art / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="shards"):
        read_manifest(art)
