"""The sensitivity pass split over calibration shards, added back in one fixed order.

The calibration rows [n, L] are cut into S contiguous shards (sizes differ by at most one).
Each shard's partial Fisher (the sum over its rows of per-sequence squared gradients, fp32)
is written per decoder layer into `out/shard_KKK/` (the `save_sensitivity` format), then a
done marker; any process may compute any shard, in any order, at any time. `reduce_shards`
then adds, one layer at a time, zeros + shard 0 + shard 1 + ... in that order, so the
Fisher has the same bits whatever ran where and when. S = 1 gives exactly the bits of the
unsharded pass (0 + x = x); S > 1 differs from it by fp32 summation order only.

Disk: each shard holds one fp32 value per quantized weight until its layers are reduced
(each reduced layer's shard files are removed at once).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from anyprec.fileio import save_tensors_atomic, saved_key, write_json_atomic
from anyprec import sensitivity
from anyprec.sensitivity import LAYER_FILE, Checkpoint, layer_of, save_sensitivity

log = logging.getLogger(__name__)
SHARD_DIR = "shard_{:03d}"
SHARD_DONE = "shard.json"


def shard_bounds(n_rows: int, shards: int) -> list[tuple[int, int]]:
    """[start, stop) rows of each of `shards` contiguous shards of n_rows sequences."""
    if not 1 <= shards <= n_rows:
        raise ValueError(f"quantization.sensitivity_shards={shards} must be between 1 and the {n_rows} "
                         f"calibration sequences; lower it or raise calibration.n_samples")
    size, extra = divmod(n_rows, shards)
    bounds, start = [], 0
    for index in range(shards):
        stop = start + size + (index < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


def shard_key(key: str, index: int, bounds: tuple[int, int]) -> str:
    """The input key of one shard: the pass's key (model + calibration set) and its rows."""
    return hashlib.sha256(f"{key}|shard {index}|rows {bounds[0]}:{bounds[1]}".encode()).hexdigest()


def shard_done(out_dir: Path, index: int, key: str) -> bool:
    marker = Path(out_dir) / SHARD_DIR.format(index) / SHARD_DONE
    return marker.is_file() and json.loads(marker.read_text(encoding="utf-8")).get("key") == key


def compute_shard(
    ids: torch.Tensor, out_dir: str | Path, key: str, index: int, shards: int,
    whole: Callable[[], nn.Module] | None, streamed_dir: Path | None = None, progress: bool = True,
) -> Path:
    """Partial Fisher of shard `index` of ids: int64[n, L] into out_dir/shard_KKK/ (skipped when done).

    whole: returns the loaded model (whole-model pass, resumable per chunk inside the shard);
    else streamed_dir: the model folder read one decoder layer at a time.
    """
    bounds = shard_bounds(len(ids), shards)[index]
    skey, folder = shard_key(key, index, bounds), Path(out_dir) / SHARD_DIR.format(index)
    if shard_done(Path(out_dir), index, skey):
        log.info("sensitivity shard %d of %d (rows %d..%d) is done", index + 1, shards, *bounds)
        return folder
    rows = ids[bounds[0]:bounds[1]]
    folder.mkdir(parents=True, exist_ok=True)
    if whole is not None:
        from anyprec.archs import quantizable_modules
        from anyprec.quantize import SENS_PARTIAL, sensitivity_chunk

        model = whole()
        checkpoint = Checkpoint(folder / SENS_PARTIAL, skey, chunk=sensitivity_chunk(len(rows)))
        fisher = sensitivity.compute_sensitivity(model, rows, quantizable_modules(model), progress, checkpoint)
        save_sensitivity(fisher, folder)
        checkpoint.clear()
        names = list(fisher)
    else:
        from anyprec.streamed_sensitivity import compute_streamed_sensitivity

        names = compute_streamed_sensitivity(streamed_dir, rows, folder, progress=progress)
    write_json_atomic(folder / SHARD_DONE, {"key": skey, "rows": list(bounds), "modules": names})
    log.info("sensitivity shard %d of %d (rows %d..%d) written", index + 1, shards, *bounds)
    return folder


def reduce_shards(out_dir: str | Path, shards: int, key: str) -> list[str]:
    """Add the shards' partial Fishers layer by layer, shard 0 first, into out_dir/layer_NNN.

    Every shard must be done. A layer already reduced for `key` is skipped (a killed
    reduction resumes); a reduced layer's shard files are removed. Returns the module names
    in the order the shards recorded them.
    """
    out_dir = Path(out_dir)
    folders = [out_dir / SHARD_DIR.format(i) for i in range(shards)]
    missing = [str(f) for f in folders if not (f / SHARD_DONE).is_file()]
    if missing:
        raise FileNotFoundError(f"sensitivity shards not computed yet: {missing}; run compute_shard for each")
    names = json.loads((folders[0] / SHARD_DONE).read_text(encoding="utf-8"))["modules"]
    for layer in sorted({layer_of(n) for n in names}):
        target = out_dir / LAYER_FILE.format(layer)
        if saved_key(target) != key:
            total = _sum_layer([f / LAYER_FILE.format(layer) for f in folders])
            # one metadata entry: safetensors writes a map's entries in a per-process order
            save_tensors_atomic(total, target, metadata={"key": key})
        for folder in folders:
            (folder / LAYER_FILE.format(layer)).unlink(missing_ok=True)
    return names


def _sum_layer(paths: list[Path]) -> dict[str, torch.Tensor]:
    """zeros + paths[0] + paths[1] + ..., tensor by tensor, in this order (fp32)."""
    total: dict[str, torch.Tensor] = {}
    for path in paths:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                part = handle.get_tensor(name)
                total.setdefault(name, torch.zeros_like(part)).add_(part)
    return total


def remove_shards(out_dir: str | Path, shards: int) -> None:
    """Remove the shard folders (after the reduced Fisher and its meta file are written)."""
    for index in range(shards):
        shutil.rmtree(Path(out_dir) / SHARD_DIR.format(index), ignore_errors=True)

