"""The quantization pipeline as plain functions, one per stage (docs/DESIGN.md).

calibration -> sensitivity -> seed quantization -> upscaling -> packing. Each stage reads
the previous stage's directory and writes its own; per-layer stages write one file per
decoder layer atomically and skip layers already done for the same inputs, so a killed
run resumes where it stopped. The Prefect tasks wrap these one to one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from anyprec.config import CalibrationConfig, QuantizationConfig
from anyprec.env import cache_dir
from anyprec.errors import OutputError, UsageError
from anyprec.fileio import apply_umask, atomic_path, save_tensors_atomic, saved_key, write_json_atomic
from anyprec.sensitivity import LAYER_FILE, LAYER_GLOB

log = logging.getLogger(__name__)
CALIB_FILE = "calib.safetensors"
CALIB_META = "calib.json"
SENS_META = "sensitivity.json"
SENS_PARTIAL = "partial_sums.safetensors"
OBJECTIVE_FILE = "objective.json"
MODULE_OBJECTIVE_FILE = "objective_modules.json"


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _key(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def prepare_calibration(model_ref: str, calib: CalibrationConfig, out_dir: str | Path) -> Path:
    """Tokenize the calibration set: out_dir/calib.safetensors {"input_ids": int64[n, L]} + calib.json."""
    from transformers import AutoTokenizer

    from anyprec.calibration import build_calibration, calibration_hash
    from anyprec.models import resolve_model_dir

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(model_ref), local_files_only=True)
    ids = build_calibration(tokenizer, calib.corpus, calib.n_samples, calib.seq_len, calib.seed, calib.eval_fraction)
    digest = calibration_hash(ids)
    save_tensors_atomic({"input_ids": ids.contiguous()}, out_dir / CALIB_FILE, metadata={"key": digest})
    write_json_atomic(out_dir / CALIB_META, {"sha256": digest, "config": calib.model_dump(), "shape": list(ids.shape)})
    return out_dir


def calibration_sha256(calib_dir: str | Path) -> str:
    return _read_json(Path(calib_dir) / CALIB_META)["sha256"]


def run_sensitivity(
    model_ref: str, calib_dir: str | Path, out_dir: str | Path, progress: bool = True, mode: str = "auto",
    shards: int = 1,
) -> Path:
    """Diagonal Fisher of every quantized weight: out_dir/layer_NNN.safetensors + sensitivity.json.

    mode: auto | streamed | whole (anyprec.streamed_sensitivity.use_streamed). The pass runs as
    `shards` calibration shards (anyprec.sensitivity_shards), each skipped when already done (a
    flow computes them as separate tasks first), then added in the one fixed order."""
    from anyprec.sensitivity_shards import reduce_shards, remove_shards

    out_dir = Path(out_dir)
    key = sensitivity_key(model_ref, calib_dir, shards)
    if _sensitivity_done(out_dir, key):
        log.info("sensitivity in %s is up to date", out_dir)
        return out_dir
    # The Fisher pass is the costliest stage and depends only on (model, calibration set, shards):
    # a content-addressed copy lets the CLI, the flow and DVC share one computation.
    shared = cache_dir() / "sensitivity" / key[:32]
    if _sensitivity_done(shared, key):
        log.info("sensitivity for these inputs found in %s, reusing it", shared)
        _link_tree(shared, out_dir)
        return out_dir
    compute = _shard_runner(model_ref, calib_dir, out_dir, mode, shards, progress)
    for index in range(shards):
        compute(index)
    names = reduce_shards(out_dir, shards, key)
    write_json_atomic(out_dir / SENS_META, {"key": key, "modules": names})
    remove_shards(out_dir, shards)
    _link_tree(out_dir, shared)
    return out_dir


def run_sensitivity_shard(model_ref: str, calib_dir: str | Path, out_dir: str | Path, index: int, mode: str = "auto",
                          shards: int = 1) -> None:
    """Partial Fisher of calibration shard `index` of `shards` into out_dir/shard_KKK/ (skipped when done)."""
    out_dir, key = Path(out_dir), sensitivity_key(model_ref, calib_dir, shards)
    if _sensitivity_done(out_dir, key) or _sensitivity_done(cache_dir() / "sensitivity" / key[:32], key):
        return  # the stage itself links the shared copy
    _shard_runner(model_ref, calib_dir, out_dir, mode, shards, False)(index)


def sensitivity_key(model_ref: str, calib_dir: str | Path, shards: int) -> str:
    """The sensitivity pass's input key: model + calibration set (+ the shard count when > 1,
    which changes the fp32 summation order and so the bits)."""
    from anyprec.models import hash_model_dir

    parts = [hash_model_dir(model_ref), calibration_sha256(calib_dir)]
    return _key(*parts, f"shards={shards}") if shards > 1 else _key(*parts)


def _shard_runner(model_ref: str, calib_dir: str | Path, out_dir: Path, mode: str, shards: int,
                  progress: bool) -> Callable[[int], Path]:
    """compute(index): one shard of the pass; the whole model is loaded once, on first need."""
    from functools import lru_cache

    from anyprec import streamed_sensitivity as streamed
    from anyprec.models import load_model, resolve_model_dir
    from anyprec.sensitivity_shards import compute_shard

    key = sensitivity_key(model_ref, calib_dir, shards)
    ids = load_file(str(Path(calib_dir) / CALIB_FILE))["input_ids"]
    model_dir = resolve_model_dir(model_ref)
    stream = streamed.use_streamed(model_dir, mode)
    whole = None if stream else lru_cache(maxsize=1)(lambda: load_model(model_ref)[0])

    def compute(index: int) -> Path:
        return compute_shard(ids, out_dir, key, index, shards, whole, model_dir if stream else None, progress)

    return compute


def sensitivity_chunk(n_sequences: int) -> int:
    """Sequences per sensitivity checkpoint: about ten checkpoints per run, at least 4 sequences
    apart (each one writes every accumulator: as many fp32 values as quantized weights)."""
    return max(4, -(-n_sequences // 10))


def _sensitivity_done(path: Path, key: str) -> bool:
    meta = path / SENS_META
    return meta.is_file() and _read_json(meta).get("key") == key


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link (or copy, across file systems) src's files into dst; the meta file goes last."""
    import shutil

    dst.mkdir(parents=True, exist_ok=True)
    files = sorted(src.glob(LAYER_GLOB)) + [src / SENS_META]
    for path in files:
        with atomic_path(dst / path.name) as part:
            try:
                os.link(path, part)
            except OSError:
                shutil.copyfile(path, part)
            apply_umask(part)  # a link shares the mode of a copy made under another umask


def _sensitivity_key(sens_dir: Path) -> str:
    meta = sens_dir / SENS_META
    if not meta.is_file():
        raise FileNotFoundError(f"{meta} is missing: run the sensitivity stage first (run_sensitivity)")
    return _read_json(meta)["key"]


def _per_layer(
    model_ref: str,
    out_dir: Path,
    key: str,
    work: Callable[[int, list[str], dict[str, torch.Tensor]], dict[str, torch.Tensor]],
    desc: str,
    progress: bool,
    layers: list[int] | None = None,
) -> Path:
    """Run `work(layer_index, module_names, weights)` for every decoder layer (or those in `layers`)
    not already done; `weights` {module: float32 [out, in]} holds that layer's quantized weights only."""
    from anyprec.layer_weights import ModelWeights

    out_dir.mkdir(parents=True, exist_ok=True)
    source = ModelWeights(model_ref)
    groups = source.groups
    wanted = range(len(groups)) if layers is None else _check_layers(layers, len(groups))
    todo = [i for i in wanted if saved_key(out_dir / LAYER_FILE.format(i)) != key]
    if len(todo) < len(wanted):
        log.info("%s: %d of %d layers already done in %s, resuming", desc, len(wanted) - len(todo), len(wanted), out_dir)
    for index in tqdm(todo, desc=desc, unit="layer", disable=not progress):
        out = work(index, groups[index], source.weights(groups[index]))
        save_tensors_atomic(out, out_dir / LAYER_FILE.format(index), metadata={"key": key})
        log.info("%s: layer %d of %d written", desc, index + 1, len(groups))
    return out_dir


def _check_layers(layers: list[int], count: int) -> list[int]:
    bad = [i for i in layers if not 0 <= i < count]
    if bad:
        raise ValueError(f"layer index {bad[0]} out of range: the model has {count} decoder layers")
    return list(layers)


def _importance(w: torch.Tensor, fisher: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(weights, clustering importance) as numpy arrays, both [out, in]."""
    from anyprec.clustering import sample_weights

    w = w.numpy()
    return w, sample_weights(w, fisher.numpy())


def run_seed_quantization(
    model_ref: str, sens_dir: str | Path, quant: QuantizationConfig, out_dir: str | Path, progress: bool = True,
    layers: list[int] | None = None,
) -> Path:
    """Seed codes per layer: {"<m>.codes": uint8[N, K], "<m>.lut": f32[N, 2**seed]}; resumable.

    layers: only these decoder layers (one task of a flow mapped over layers); default all."""
    from anyprec.clustering import ClusterMethod, quantize_seed
    from anyprec.sensitivity import load_sensitivity

    sens_dir = Path(sens_dir)
    key = _key(_sensitivity_key(sens_dir), "seed", str(quant.seed_bits), quant.method)
    if quant.joint_weight is not None:  # plain seeds keep their earlier key (finished layers stay valid)
        key = _key(key, "joint", repr(quant.joint_weight))

    def work(index: int, names: list[str], weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        fisher = load_sensitivity(sens_dir, names)
        out: dict[str, torch.Tensor] = {}
        for name in names:
            w, imp = _importance(weights.pop(name), fisher.pop(name))
            codes, lut = quantize_seed(w, imp, quant.seed_bits, ClusterMethod(quant.method), quant.joint_weight)
            out[f"{name}.codes"] = torch.from_numpy(np.ascontiguousarray(codes))
            out[f"{name}.lut"] = torch.from_numpy(np.ascontiguousarray(lut, dtype=np.float32))
        return out

    return _per_layer(model_ref, Path(out_dir), key, work, f"seed {quant.seed_bits}-bit", progress, layers)


def run_upscaling(
    model_ref: str,
    sens_dir: str | Path,
    seed_dir: str | Path,
    quant: QuantizationConfig,
    out_dir: str | Path,
    progress: bool = True,
    layers: list[int] | None = None,
) -> Path:
    """Nested parent codes + one LUT per bit-width, per layer; writes objective.json at the end.

    layers: only these decoder layers, and no objective (one task of a flow mapped over layers;
    the stage's own run then finds them done and writes the objective)."""
    from anyprec.clustering import ClusterMethod, upscale
    from anyprec.sensitivity import load_sensitivity

    sens_dir, seed_dir, out_dir = Path(sens_dir), Path(seed_dir), Path(out_dir)
    key = _key(_sensitivity_key(sens_dir), "nested", str(quant.seed_bits), str(quant.parent_bits), quant.method)
    if quant.joint_weight is not None:
        key = _key(key, "joint", repr(quant.joint_weight))
    if quant.lookahead_weight is not None:  # plain splits keep their earlier key
        key = _key(key, "lookahead", repr(quant.lookahead_weight))

    def work(index: int, names: list[str], weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        seed_file = seed_dir / LAYER_FILE.format(index)
        if not seed_file.is_file():
            raise FileNotFoundError(f"{seed_file} is missing: run the seed quantization stage first")
        seed = load_file(str(seed_file))
        fisher = load_sensitivity(sens_dir, names)
        out: dict[str, torch.Tensor] = {}
        for name in names:
            w, imp = _importance(weights.pop(name), fisher.pop(name))
            codes, luts = upscale(
                w, imp, seed[f"{name}.codes"].numpy(), seed[f"{name}.lut"].numpy(),
                quant.seed_bits, quant.parent_bits, ClusterMethod(quant.method), quant.lookahead_weight,
            )
            out[f"{name}.codes"] = torch.from_numpy(np.ascontiguousarray(codes))
            for b, lut in luts.items():
                out[f"{name}.lut{b}"] = torch.from_numpy(np.ascontiguousarray(lut, dtype=np.float32))
        return out

    _per_layer(model_ref, out_dir, key, work, f"upscale {quant.seed_bits}->{quant.parent_bits}", progress, layers)
    if layers is not None:
        return out_dir
    per_module = module_objectives(model_ref, sens_dir, out_dir, quant)
    write_json_atomic(out_dir / MODULE_OBJECTIVE_FILE, per_module)
    write_json_atomic(out_dir / OBJECTIVE_FILE, objective_totals(per_module))
    return out_dir


def nested_objective(model_ref: str, sens_dir: Path, nested_dir: Path, quant: QuantizationConfig) -> dict[str, float]:
    """Total weighted objective sum_j f_j (w_j - c_j)^2 over all layers, per bit-width."""
    return objective_totals(module_objectives(model_ref, sens_dir, nested_dir, quant))


def objective_totals(per_module: dict[str, dict[str, float]]) -> dict[str, float]:
    """{bits: sum over modules} of a per-module objective table {module: {bits: value}}."""
    totals: dict[str, float] = {}
    for row in per_module.values():
        for b, value in row.items():
            totals[b] = totals.get(b, 0.0) + value
    return totals


def module_objectives(
    model_ref: str, sens_dir: Path, nested_dir: Path, quant: QuantizationConfig
) -> dict[str, dict[str, float]]:
    """Weighted objective sum_j f_j (w_j - c_j)^2 of every quantized module: {module: {bits: value}}.

    Reads one decoder layer's weights, Fisher and codes at a time."""
    from anyprec.clustering import weighted_objective
    from anyprec.layer_weights import ModelWeights
    from anyprec.sensitivity import load_sensitivity

    source = ModelWeights(model_ref)
    table: dict[str, dict[str, float]] = {}
    for index, names in enumerate(source.groups):
        layer = load_file(str(nested_dir / LAYER_FILE.format(index)))
        fisher = load_sensitivity(sens_dir, names)
        weights = source.weights(names)
        for name in names:
            w, imp = _importance(weights.pop(name), fisher.pop(name))
            parent = layer[f"{name}.codes"].numpy()
            table[name] = {}
            for b in quant.bit_widths:
                codes = parent >> (quant.parent_bits - b)
                table[name][str(b)] = float(weighted_objective(w, imp, codes, layer[f"{name}.lut{b}"].numpy()).sum())
    return table


def _packed_layer(layer: dict[str, torch.Tensor], names: list[str], quant: QuantizationConfig,
                  source: Any) -> dict[str, Any]:
    """{module: QuantizedModule} of one decoder layer from its nested codes + LUTs (upscaling output)."""
    from anyprec.kernels import pack_bitplanes
    from anyprec.packed import QuantizedModule

    out = {}
    for name in names:
        codes = layer.pop(f"{name}.codes")
        out[name] = QuantizedModule(planes=pack_bitplanes(codes, quant.parent_bits),
                                    luts={b: layer[f"{name}.lut{b}"] for b in quant.bit_widths},
                                    in_features=int(codes.shape[1]), conv1d=source.conv1d(name))
    return out


def run_packing(
    model_ref: str, nested_dir: str | Path, quant: QuantizationConfig, out_dir: str | Path, inputs: dict[str, Any]
) -> Path:
    """Pack nested codes into bitplanes + LUTs and write the artifact (anyprec.packed, format 2):
    one shard per decoder layer, written as it is packed, so one layer's codes are in memory."""
    from anyprec.layer_weights import ModelWeights
    from anyprec.packed import PackedWriter

    nested_dir = Path(nested_dir)
    source = ModelWeights(model_ref)
    with PackedWriter(out_dir, len(source.groups), quant.seed_bits, quant.parent_bits) as writer:
        for index, names in enumerate(tqdm(source.groups, desc="pack", unit="layer")):
            layer_file = nested_dir / LAYER_FILE.format(index)
            if not layer_file.is_file():
                raise FileNotFoundError(f"{layer_file} is missing: run the upscaling stage first")
            writer.add_layer(_packed_layer(load_file(str(layer_file)), names, quant, source))
        objective_path = nested_dir / OBJECTIVE_FILE
        extra = {"objective": _read_json(objective_path)} if objective_path.is_file() else {}
        extra["method"] = quant.method
        # The per-module table lets fractional precisions be planned from the artifact alone.
        per_module_path = nested_dir / MODULE_OBJECTIVE_FILE
        json_files = {MODULE_OBJECTIVE_FILE: _read_json(per_module_path)} if per_module_path.is_file() else {}
        return writer.finish(source.meta.config, source.generation_config(), source.tokenizer(),
                             source.dense_state(), inputs, extra, json_files)


def check_out_dir(out_dir: Path, model_dir: Path, force: bool = False) -> None:
    """Refuse an --out that would delete what the tool did not create, before any work.

    Refused: the model's folder, a folder containing it or inside it; a non-empty folder that
    is not exactly one of our artifacts; one of our artifacts unless `force`.
    """
    from anyprec.packed import check_replaceable, foreign_entries

    out, model = out_dir.resolve(), model_dir.resolve()
    if out == model or out in model.parents or model in out.parents:
        relation = "is" if out == model else "contains" if out in model.parents else "lies inside"
        raise OutputError(
            f"--out {out_dir} {relation} the input model's folder {model_dir}; nothing was changed: "
            "choose a folder outside the model's"
        )
    check_replaceable(out_dir)
    if out_dir.is_dir() and foreign_entries(out_dir) == [] and not force:
        raise OutputError(f"--out {out_dir} already holds an anyprec artifact; add --force to replace it")
    probe_writable(out_dir)


def probe_writable(out_dir: Path) -> None:
    """Create and remove the kind of temp folder the writer will use, so that a read-only or
    forbidden location fails now rather than after the whole run (OSError, reported by errno)."""
    import shutil

    from anyprec.fileio import make_temp_dir

    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(make_temp_dir(out_dir, kind="tmp"))
    except OSError as err:
        err.filename = f"--out {out_dir}"  # the user's flag, not our probe's temp name
        raise


def check_seq_len(calib: CalibrationConfig, model_dir: Path) -> None:
    """The calibration sequences must fit the model's context."""
    from anyprec.models import context_length

    context = context_length(model_dir)
    if context is not None and calib.seq_len > context:
        raise UsageError(
            f"--seq-len {calib.seq_len} is longer than the model's context of {context} tokens; "
            f"use --seq-len {context} or less"
        )


def quantize_model(
    model_ref: str,
    out_dir: str | Path,
    calib: CalibrationConfig = CalibrationConfig(),
    quant: QuantizationConfig = QuantizationConfig(),
    work_dir: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Every stage of `anyprec.stages.STAGES` for one model; the artifact goes to `out_dir`, the
    other stages' folders into `work_dir` (default: a cache folder keyed by the model and
    settings, so re-running an interrupted command resumes).

    `out_dir` is checked first (`check_out_dir`); `force` allows replacing an earlier artifact."""
    from anyprec import stages

    base = stages.resolve_base(model_ref)
    check_out_dir(Path(out_dir), Path(base.path), force)
    check_seq_len(calib, Path(base.path))
    work = Path(work_dir) if work_dir is not None else stages.work_dir(base.sha256, calib, quant)

    def folder(spec: stages.StageSpec) -> Path:
        return Path(out_dir) if spec.name == stages.PACKED else work / spec.folder

    done = stages.run_stages(base, {"calibration": calib, "quantization": quant}, folder, progress)
    return done[stages.PACKED]
