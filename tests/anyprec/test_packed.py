"""The artifact: nested identity from disk, exact dequantization, sizes, and bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from anyprec.kernels import dequantize, unpack_bitplanes
from anyprec.packed import (
    DENSE_FILE,
    MANIFEST,
    ArtifactError,
    artifact_sizes,
    load_packed_tensors,
    read_manifest,
    shard_name,
)
from anyprec.quantize import LAYER_FILE


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "artifact"
    shutil.copytree(src, dst)
    return dst


def test_nested_identity_and_dequantization_match_memory(tiny_quantized):
    artifact, work = tiny_quantized
    manifest, modules, _ = load_packed_tensors(artifact)
    parent = manifest["parent_bits"]
    nested = {}
    for path in sorted((work / "nested").glob("layer_*.safetensors")):
        nested.update(load_file(str(path)))
    assert set(modules) and all(f"{name}.codes" in nested for name in modules)
    for name, qm in modules.items():
        parent_codes = nested[f"{name}.codes"]
        assert torch.equal(unpack_bitplanes(qm.planes, parent, qm.in_features), parent_codes)
        for b in range(manifest["seed_bits"], parent + 1):
            codes_b = unpack_bitplanes(qm.planes, b, qm.in_features)
            assert torch.equal(codes_b, parent_codes >> (parent - b)), (name, b)
            in_memory_lut = nested[f"{name}.lut{b}"].to(torch.float16)
            expected = torch.gather(in_memory_lut.float(), 1, (parent_codes >> (parent - b)).long())
            got = dequantize(qm.planes, qm.luts[b], b, qm.in_features, torch.float32)
            assert torch.equal(got, expected), (name, b)


def test_subset_load_keeps_only_needed_planes_and_luts(tiny_artifact):
    _, modules, _ = load_packed_tensors(tiny_artifact, bits=[3, 5])
    for qm in modules.values():
        assert qm.planes.shape[0] == 5
        assert sorted(qm.luts) == [3, 5]


def test_sizes_split_codes_luts_dense(tiny_artifact):
    sizes = artifact_sizes(tiny_artifact)
    art = sizes["artifact"]
    assert art["total"] == art["codes"] + art["luts"] + art["dense"]
    assert sorted(sizes["per_bits"]) == [3, 4, 5, 6, 7, 8]
    assert sizes["per_bits"][3]["total"] < sizes["per_bits"][8]["total"] <= art["total"]
    assert sizes["separate_sum"] > art["total"]
    assert art["codes"] == sizes["per_bits"][8]["codes"]


def test_truncated_file_is_refused(tiny_artifact, tmp_path):
    art = _copy(tiny_artifact, tmp_path)
    shard = art / shard_name(1, 2)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="truncated"):
        load_packed_tensors(art)


def test_altered_file_is_refused(tiny_artifact, tmp_path):
    art = _copy(tiny_artifact, tmp_path)
    data = bytearray((art / DENSE_FILE).read_bytes())
    data[-3] ^= 0xFF
    (art / DENSE_FILE).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        load_packed_tensors(art)


def test_unknown_format_version_is_refused(tiny_artifact, tmp_path):
    art = _copy(tiny_artifact, tmp_path)
    manifest = json.loads((art / MANIFEST).read_text())
    manifest["format_version"] = 99
    (art / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="format_version 99"):
        read_manifest(art)


@pytest.mark.parametrize("bits", [[2], [9], [3, 9]])
def test_bits_outside_range_are_refused(tiny_artifact, bits):
    with pytest.raises(ArtifactError, match=r"holds 3\.\.8 bits"):
        load_packed_tensors(tiny_artifact, bits=bits)


def test_missing_manifest_is_not_an_artifact(tiny_artifact, tmp_path):
    art = _copy(tiny_artifact, tmp_path)
    (art / MANIFEST).unlink()
    with pytest.raises(ArtifactError, match="manifest.json is missing"):
        load_packed_tensors(art)


def test_interrupted_write_leaves_nothing_loadable(tiny_quantized, tmp_path, monkeypatch):
    import anyprec.packed as packed
    from anyprec.config import QuantizationConfig
    from anyprec.quantize import run_packing

    artifact, work = tiny_quantized
    manifest = read_manifest(artifact)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("simulated kill while writing")

    monkeypatch.setattr(packed, "save_tensors", crash)
    out = tmp_path / "packed"
    with pytest.raises(KeyboardInterrupt):
        run_packing(manifest["inputs"]["base_model_ref"], work / "nested",
                    QuantizationConfig(), out, manifest["inputs"])
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_layer_files_are_named_per_decoder_layer(tiny_quantized):
    _, work = tiny_quantized
    names = sorted(p.name for p in (work / "nested").glob("*.safetensors"))
    assert names == [LAYER_FILE.format(0), LAYER_FILE.format(1)]
