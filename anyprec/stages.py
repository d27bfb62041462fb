"""The quantization stages, declared once.

`STAGES` lists every stage in order: its one name (the CLI's stage argument, the Prefect
task, the dvc.yaml stage and the output folder all use it), the library function it runs,
the stages whose folders it reads, the params.yaml keys and source files it depends on, and
a version to bump when its output changes for the same inputs. `anyprec quantize`
(`quantize_model`), the Prefect flow, the DVC stage entry point and dvc.yaml all derive from
this list, so a stage added here appears in each of them.

This module also builds the one provenance record an artifact carries (`provenance`) and
the default work folder of a quantization (`work_dir`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from anyprec.config import CalibrationConfig, QuantizationConfig, config_hash

CALIB, SENSITIVITY, SEED, NESTED, PACKED = "calib", "sensitivity", "seed", "nested", "packed"


@dataclass(frozen=True)
class BaseModelRef:
    """A resolved base model: registry key (or the reference given), local folder, content sha256."""

    name: str
    path: str
    sha256: str


@dataclass(frozen=True)
class StageRun:
    """What a stage function receives: the base model, the params sections the stage declared,
    the folders of its inputs by stage name, and its own output folder."""

    base: BaseModelRef
    settings: dict[str, BaseModel]
    inputs: dict[str, Path]
    out: Path
    progress: bool = True


@dataclass(frozen=True)
class StageSpec:
    """One quantization stage. `params` are dotted params.yaml keys; their first parts are the
    sections handed to `run` (a section not declared is not handed over)."""

    name: str
    run: Callable[[StageRun], Path]
    inputs: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    code: tuple[str, ...] = ()
    version: str = "1"
    resumable: bool = False  # per-layer files are kept across re-runs so a killed run resumes
    # One decoder layer's share of `run` (a flow maps it over layers as separate task runs; `run`
    # then finds those layers done and only finishes the stage).
    layer: Callable[[StageRun, int], None] | None = field(default=None, compare=False)
    digest: Callable[[Path], str] | None = field(default=None, compare=False)
    # One calibration shard's share of `run`, and the number of shards the settings ask for (a flow
    # maps `shard` over them as separate task runs; `run` then finds them done and adds them up).
    shard: Callable[[StageRun, int], None] | None = field(default=None, compare=False)
    shard_count: Callable[[dict[str, BaseModel]], int] | None = field(default=None, compare=False)

    @property
    def folder(self) -> str:
        return self.name

    @property
    def sections(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(key.split(".")[0] for key in self.params))


def _calib(r: StageRun) -> Path:
    from anyprec.quantize import prepare_calibration

    return prepare_calibration(r.base.path, r.settings["calibration"], r.out)


def _sensitivity(r: StageRun) -> Path:
    from anyprec.quantize import run_sensitivity

    quant = r.settings["quantization"]
    return run_sensitivity(r.base.path, r.inputs[CALIB], r.out, r.progress, quant.sensitivity, quant.sensitivity_shards)


def _sensitivity_shard(r: StageRun, index: int) -> None:
    from anyprec.quantize import run_sensitivity_shard

    quant = r.settings["quantization"]
    run_sensitivity_shard(r.base.path, r.inputs[CALIB], r.out, index, quant.sensitivity, quant.sensitivity_shards)


def _sensitivity_shards(settings: dict[str, BaseModel]) -> int:
    return settings["quantization"].sensitivity_shards


def _seed(r: StageRun) -> Path:
    from anyprec.quantize import run_seed_quantization

    return run_seed_quantization(r.base.path, r.inputs[SENSITIVITY], r.settings["quantization"], r.out, r.progress)


def _seed_layer(r: StageRun, index: int) -> None:
    from anyprec.quantize import run_seed_quantization

    run_seed_quantization(r.base.path, r.inputs[SENSITIVITY], r.settings["quantization"], r.out, False, [index])


def _nested_layer(r: StageRun, index: int) -> None:
    from anyprec.quantize import run_upscaling

    run_upscaling(r.base.path, r.inputs[SENSITIVITY], r.inputs[SEED], r.settings["quantization"], r.out, False,
                  [index])


def _nested(r: StageRun) -> Path:
    from anyprec.quantize import run_upscaling

    return run_upscaling(r.base.path, r.inputs[SENSITIVITY], r.inputs[SEED], r.settings["quantization"], r.out,
                         r.progress)


def _packed(r: StageRun) -> Path:
    from anyprec.quantize import calibration_sha256, run_packing

    calib, quant = r.settings["calibration"], r.settings["quantization"]
    inputs = provenance(r.base, calib, quant, calibration_sha256(r.inputs[CALIB]))
    return run_packing(r.base.path, r.inputs[NESTED], quant, r.out, inputs)


def _calib_digest(path: Path) -> str:
    from anyprec.quantize import calibration_sha256

    return calibration_sha256(path)


def artifact_digest(artifact_dir: str | Path) -> str:
    """sha256 over the artifact's per-file sha256 (from manifest.json): its content identity."""
    import hashlib
    import json

    from anyprec.packed import read_manifest

    files = {name: entry["sha256"] for name, entry in sorted(read_manifest(artifact_dir)["files"].items())}
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


STAGES: list[StageSpec] = [
    StageSpec(CALIB, _calib, params=("calibration",), code=("anyprec/calibration.py", "anyprec/quantize.py"),
              digest=_calib_digest),
    StageSpec(SENSITIVITY, _sensitivity, inputs=(CALIB,),
              params=("quantization.sensitivity", "quantization.sensitivity_shards"),
              code=("anyprec/sensitivity.py", "anyprec/streamed_sensitivity.py", "anyprec/sensitivity_shards.py"),
              resumable=True, shard=_sensitivity_shard, shard_count=_sensitivity_shards),
    StageSpec(SEED, _seed, inputs=(SENSITIVITY,), params=("quantization.seed_bits", "quantization.method",
                                                         "quantization.joint_weight"),
              code=("anyprec/clustering.py",), resumable=True, layer=_seed_layer),
    StageSpec(NESTED, _nested, inputs=(SENSITIVITY, SEED), params=("quantization",),
              code=("anyprec/clustering.py",), resumable=True, layer=_nested_layer),
    StageSpec(PACKED, _packed, inputs=(CALIB, NESTED), params=("calibration", "quantization"),
              code=("anyprec/packed.py", "kernels/bitplanes.py"), digest=artifact_digest),
]


def layer_count(model_dir: str | Path) -> int:
    """Number of decoder layers of the model in `model_dir` (from a meta-device model: no weights read)."""
    from anyprec.layer_weights import ModelWeights

    return len(ModelWeights(model_dir).groups)


# Peak bytes of one layer's clustering per quantized weight of that layer: upscaling, the highest
# stage, measured 3.19 GiB at 7B shape, 0.55 GiB of it the torch/transformers baseline, for the
# 202M quantized weights of one layer (docs/SCALE.md): ~14 bytes each.
LAYER_BYTES_PER_WEIGHT = 14


def mapped_task_bytes(spec: StageSpec, model_dir: str | Path, settings: dict[str, BaseModel]) -> int:
    """About the memory one mapped task of `spec` adds (bytes): one layer's clustering, or one
    calibration shard's pass (the whole fp32 model + accumulators, or one streamed layer)."""
    from anyprec.layer_weights import ModelWeights
    from anyprec.streamed_sensitivity import use_streamed, whole_pass_bytes

    if spec.shard is not None and not use_streamed(model_dir, settings["quantization"].sensitivity):
        return whole_pass_bytes(model_dir)
    source = ModelWeights(model_dir)
    largest = max(sum(source.meta.get_submodule(n).weight.numel() for n in group) for group in source.groups)
    return LAYER_BYTES_PER_WEIGHT * largest


def tasks_at_once(task_bytes: int, available: int, cap: int) -> int:
    """How many tasks of task_bytes each fit in `available` bytes at once: 1 to cap."""
    return max(1, min(cap, available // max(1, task_bytes)))


def stage(name: str) -> StageSpec:
    """The stage called `name`; ValueError naming the known stages otherwise."""
    for spec in STAGES:
        if spec.name == name:
            return spec
    raise ValueError(f"unknown stage {name!r}: expected one of {[s.name for s in STAGES]}")


def settings_for(spec: StageSpec, sections: dict[str, BaseModel]) -> dict[str, BaseModel]:
    """The params sections `spec` declared, taken from `sections` (e.g. a Params' fields)."""
    return {name: sections[name] for name in spec.sections}


def provenance(base: BaseModelRef, calib: CalibrationConfig, quant: QuantizationConfig,
               calibration_sha256: str) -> dict[str, Any]:
    """The `inputs` record of an artifact's manifest.

    `base_model_ref` is what `anyprec.models.load_model` resolves: the embedded model's name,
    else the base model's absolute folder; `base_model_name` is the registry key it came from.
    """
    from anyprec.models import DEFAULT_ALIASES

    ref = base.name if base.name in DEFAULT_ALIASES else str(Path(base.path).resolve())
    return {
        "base_model_ref": ref,
        "base_model_name": base.name,
        "base_model_sha256": base.sha256,
        "calibration": calib.model_dump(),
        "calibration_sha256": calibration_sha256,
        "quantization": quant.model_dump(),
        "params_sha256": config_hash(calib, quant),
    }


def work_dir(base_model_sha256: str, calib: CalibrationConfig, quant: QuantizationConfig) -> Path:
    """The default folder of a quantization's intermediate stages (keyed by model + settings)."""
    from anyprec.env import cache_dir

    return cache_dir() / "work" / f"{base_model_sha256[:16]}-{config_hash(calib, quant)[:16]}"


def resolve_base(model_ref: str) -> BaseModelRef:
    """Resolve a model reference (folder or embedded name) and hash its content."""
    from anyprec.models import hash_model_dir, resolve_model_dir

    path = resolve_model_dir(model_ref)
    name = str(model_ref) if not Path(model_ref).is_dir() else Path(model_ref).resolve().name
    return BaseModelRef(name=name, path=str(path), sha256=hash_model_dir(path))


def run_stages(base: BaseModelRef, sections: dict[str, BaseModel], folder: Callable[[StageSpec], Path],
               progress: bool = True) -> dict[str, Path]:
    """Run every stage of STAGES in order; `folder(spec)` says where each writes. {name: folder}."""
    done: dict[str, Path] = {}
    for spec in STAGES:
        run = StageRun(base, settings_for(spec, sections), {n: done[n] for n in spec.inputs}, folder(spec), progress)
        done[spec.name] = Path(spec.run(run))
    return done
