"""Prefect tasks for the quantization stages: thin wrappers over `anyprec.quantize`.

Each task calls one core stage function (docs/DESIGN.md, "Pipeline stages") and returns a
StageOutput whose digest identifies the content for downstream cache keys. Call them via
`anyprec.tasks.runner.run_stage` (cache + stamps) or `.fn(...)` (plain function, no Prefect).
The core writes per layer and resumes from what it finds in `out`; nothing here deletes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from prefect import task

from anyprec.config import CalibrationConfig, QuantizationConfig
from anyprec.env import apply_offline_env
from anyprec.tasks.caching import BaseModelInfo, StageOutput, content_cache_key, stage_key

apply_offline_env()

CACHED = {"cache_key_fn": content_cache_key, "persist_result": True, "version": "1"}


@task(name="resolve-base-model")
def resolve_base_model(name: str, location: str) -> BaseModelInfo:
    """Resolve a model reference to a local HF directory and hash its config + weights."""
    from anyprec.models import hash_model_dir, resolve_model_dir

    model_dir = resolve_model_dir(location)
    return BaseModelInfo(name=name, location=str(model_dir), sha256=hash_model_dir(model_dir))


def _derived(stage: str, out: str, **inputs: object) -> StageOutput:
    """A StageOutput whose digest is the hash of the stage's inputs (deterministic stages)."""
    return StageOutput(stage=stage, path=out, digest=stage_key(stage, None, inputs))


@task(name="prepare-calibration", **CACHED)
def prepare_calibration(base: BaseModelInfo, calibration: CalibrationConfig, out: str) -> StageOutput:
    """Calibration token ids int64[n_samples, seq_len] -> out/calib.safetensors; digest = their sha256."""
    from anyprec.quantize import prepare_calibration as core

    path = Path(core(base.location, calibration, out))
    meta = json.loads((path / "calib.json").read_text())
    return StageOutput(stage="calib", path=str(path), digest=meta["sha256"])


@task(name="sensitivity", **CACHED)
def sensitivity(base: BaseModelInfo, calib: StageOutput, out: str) -> StageOutput:
    """Diagonal Fisher f32[N, K] per quantizable module -> out/layer_NNN.safetensors (resumable)."""
    from anyprec.quantize import run_sensitivity

    path = run_sensitivity(base.location, calib.path, out)
    return _derived("sensitivity", str(path), base=base.sha256, calib=calib.digest)


@task(name="seed-quantization", **CACHED)
def seed_quantization(
    base: BaseModelInfo, sens: StageOutput, quantization: QuantizationConfig, out: str
) -> StageOutput:
    """Seed codes uint8[N, K] + LUTs f32[N, 2**seed_bits] per module (resumable per layer)."""
    from anyprec.quantize import run_seed_quantization

    path = run_seed_quantization(base.location, sens.path, quantization, out)
    return _derived("seed", str(path), base=base.sha256, sens=sens.digest, q=quantization.model_dump())


@task(name="upscaling", **CACHED)
def upscaling(
    base: BaseModelInfo, sens: StageOutput, seed: StageOutput, quantization: QuantizationConfig, out: str
) -> StageOutput:
    """Parent codes + nested LUTs for every bit-width seed..parent (resumable per layer)."""
    from anyprec.quantize import run_upscaling

    path = run_upscaling(base.location, sens.path, seed.path, quantization, out)
    return _derived("nested", str(path), seed=seed.digest, sens=sens.digest, q=quantization.model_dump())


def manifest_digest(artifact_dir: str | Path) -> str:
    """sha256 over the artifact's per-file sha256 (from manifest.json): its content identity."""
    manifest = json.loads((Path(artifact_dir) / "manifest.json").read_text())
    files = {name: entry["sha256"] for name, entry in sorted(manifest["files"].items())}
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


@task(name="packing", **CACHED)
def packing(
    base: BaseModelInfo,
    calib: StageOutput,
    nested: StageOutput,
    calibration: CalibrationConfig,
    quantization: QuantizationConfig,
    out: str,
) -> StageOutput:
    """Bitplane-packed any-precision artifact (format v1); digest over its files' sha256."""
    from anyprec.config import config_hash
    from anyprec.quantize import run_packing

    # Same provenance keys as anyprec.quantize.quantize_model writes from the CLI.
    inputs = {
        "base_model_ref": base.name,
        "base_model_sha256": base.sha256,
        "calibration": calibration.model_dump(),
        "calibration_sha256": calib.digest,
        "quantization": quantization.model_dump(),
        "params_sha256": config_hash(calibration, quantization),
    }
    path = run_packing(base.location, nested.path, quantization, out, inputs)
    return StageOutput(stage="packed", path=str(path), digest=manifest_digest(path))
