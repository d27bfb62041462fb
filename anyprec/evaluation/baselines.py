"""Baselines at each bit-width on the same calibration and sensitivity, and weight swapping.

Methods (all per output row, sample weights f = Fisher * [w != 0]):
- base: the unquantized model;
- rtn: uniform min-max round-to-nearest at b bits (unweighted);
- dedicated: SqueezeLLM-style weighted non-uniform clustering at exactly b bits, not nested
  (weighted k-means++ + Lloyd, as SqueezeLLM and the paper's comparison do);
- dedicated-optimal: the exact optimal b-bit clustering, not nested: the best any b-bit
  per-row LUT can do on the weighted objective (a lower bound for every nested method;
  costly at 7-8 bits, so not in the default method list);
- reference: the paper's nested algorithm (Lloyd seed + Lloyd/binary-search splits);
- ours: nested with the exact optimal seed and splits (what the packed artifact holds).

A method's result is `{bits: {module: (codes uint8[N, K], lut f32[N, 2**b])}}`; the model is
evaluated by writing the dequantized weights lut[n, codes[n, k]] into its Linear layers
and restoring the originals afterwards.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from anyprec import archs
from anyprec.config import QuantizationConfig
from anyprec.fileio import apply_umask, atomic_path

QuantizedWeights = dict[str, tuple[np.ndarray, np.ndarray]]


class Method(str, Enum):
    """Evaluated models; every one but BASE is quantized per bit-width."""

    BASE = "base"
    RTN = "rtn"
    DEDICATED = "dedicated"
    DEDICATED_OPTIMAL = "dedicated-optimal"
    REFERENCE = "reference"
    OURS = "ours"


NESTED_METHODS = (Method.REFERENCE, Method.OURS)
DEFAULT_METHODS = [m.value for m in Method if m is not Method.DEDICATED_OPTIMAL]


@dataclass
class MethodResult:
    """One method on every module: quantized weights and weighted objective per bit-width.

    codes: {bits: {module: (codes, lut)}}; objective: {bits: {module: sum of row objectives}}.
    """

    method: Method
    codes: dict[int, QuantizedWeights] = field(default_factory=dict)
    objective: dict[int, dict[str, float]] = field(default_factory=dict)

    def total_objective(self, bits: int) -> float:
        """Sum of the weighted objective over all modules at `bits`."""
        return float(sum(self.objective[bits].values()))


def dequantize(codes: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """W[n, k] = lut[n, codes[n, k]]: codes uint8[N, K], lut float[N, 2**b] -> f32[N, K]."""
    if codes.ndim != 2 or lut.ndim != 2 or codes.shape[0] != lut.shape[0]:
        raise ValueError(f"codes {codes.shape} and lut {lut.shape} must be [N, K] and [N, 2**b]")
    if codes.size and int(codes.max()) >= lut.shape[1]:
        raise ValueError(f"code {int(codes.max())} out of range for a LUT of {lut.shape[1]} entries")
    return np.take_along_axis(np.asarray(lut, np.float32), codes.astype(np.int64), axis=1)


def apply_quantized_weights(model: nn.Module, qweights: QuantizedWeights) -> dict[str, torch.Tensor]:
    """Write each module's dequantized weight into the model (GPT-2 Conv1D handled by archs).

    Returns the originals as CPU float32 [out, in] copies for restore_weights.
    """
    originals: dict[str, torch.Tensor] = {}
    try:
        for name, (codes, lut) in qweights.items():
            module = model.get_submodule(name)
            originals[name] = archs.get_weight(module).cpu()
            archs.set_weight(module, torch.from_numpy(dequantize(codes, lut)))
    except Exception:
        restore_weights(model, originals)
        raise
    return originals


def restore_weights(model: nn.Module, originals: dict[str, torch.Tensor]) -> None:
    """Write back the weights apply_quantized_weights returned."""
    for name, weight in originals.items():
        archs.set_weight(model.get_submodule(name), weight)


@contextmanager
def quantized_weights(model: nn.Module, qweights: QuantizedWeights) -> Iterator[nn.Module]:
    """Run the block with the model's weights replaced by qweights; originals restored after."""
    originals = apply_quantized_weights(model, qweights)
    try:
        yield model
    finally:
        restore_weights(model, originals)


def _quantize_module(
    w: np.ndarray, weights: np.ndarray, method: Method, bits: list[int], seed_bits: int, parent_bits: int,
    options: dict[str, float],
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """One module quantized by `method` at every bit-width: {b: (codes, lut)}; options: the
    artifact's clustering options (joint_weight, lookahead_weight) for ours."""
    from anyprec.clustering import ClusterMethod, quantize_nested, quantize_rtn, quantize_seed

    if method is Method.RTN:
        return {b: quantize_rtn(w, b) for b in bits}
    if method in (Method.DEDICATED, Method.DEDICATED_OPTIMAL):
        cluster = ClusterMethod.LLOYD if method is Method.DEDICATED else ClusterMethod.OPTIMAL
        return {b: quantize_seed(w, weights, b, cluster) for b in bits}
    if method in NESTED_METHODS:
        outside = [b for b in bits if not seed_bits <= b <= parent_bits]
        if outside:
            raise ValueError(f"bits {outside} outside the nested range {seed_bits}..{parent_bits}")
        cluster = ClusterMethod.OPTIMAL if method is Method.OURS else ClusterMethod.LLOYD
        parent, luts = quantize_nested(w, weights, seed_bits, parent_bits, cluster,
                                       **(options if method is Method.OURS else {}))
        return {b: (parent >> (parent_bits - b), luts[b]) for b in bits}
    raise ValueError(f"method {method.value!r} is not quantized; use one of "
                     f"{[m.value for m in Method if m is not Method.BASE]}")


def quantize_method(
    model: nn.Module,
    fisher: dict[str, torch.Tensor],
    method: Method | str,
    bits: list[int],
    seed_bits: int = 3,
    parent_bits: int = 8,
    progress: bool = True,
    cache: Path | None = None,
    cache_key: str = "",
    quant: QuantizationConfig | None = None,
) -> MethodResult:
    """Quantize every module in `fisher` (f32[N, K] per module name) with `method` at `bits`.

    quant: the artifact's quantization settings; ours uses its clustering options (joint seed,
    look-ahead upscaling: None = plain, the paper's), the other methods are the same either way.

    cache: a folder keeping each module's result (`<method>/<module>.safetensors`), reused
    when its stored `cache_key` matches (pass one that names the model, calibration and
    seed/parent bits): only the bit-widths it lacks are quantized, and the file is rewritten
    with the old widths and the new ones (the dedicated 8-bit clustering alone takes tens of
    minutes on a 135M model, so no cached width is ever dropped).
    """
    from anyprec.clustering import sample_weights, weighted_objective

    method = Method(method)
    options = {k: v for k, v in (quant.model_dump(include={"joint_weight", "lookahead_weight"}) if quant else {}).items()
               if v is not None and method is Method.OURS}
    if options:  # plain ours keeps its earlier cache key
        cache_key = f"{cache_key}|{json.dumps(options, sort_keys=True)}"
    result = MethodResult(method, {b: {} for b in bits}, {b: {} for b in bits})
    for name in tqdm(list(fisher), desc=f"quantize {method.value}", disable=not progress, leave=False):
        path = cache / method.value / f"{name}.safetensors" if cache else None
        stored = _load_cached(path, cache_key) if path else {}
        missing = [b for b in bits if b not in stored]
        if missing:
            w = archs.get_weight(model.get_submodule(name)).numpy()
            weights = sample_weights(w, fisher[name].detach().cpu().numpy().astype(np.float32))
            stored |= {b: (codes, lut, float(weighted_objective(w, weights, codes, lut).sum()))
                       for b, (codes, lut) in _quantize_module(w, weights, method, missing, seed_bits,
                                                                parent_bits, options).items()}
            if path:
                _save_cached(path, stored, cache_key)
        for b in bits:
            codes, lut, objective = stored[b]
            result.codes[b][name] = (codes, lut)
            result.objective[b][name] = objective
    return result


def _save_cached(path: Path, stored: dict[int, tuple[np.ndarray, np.ndarray, float]], key: str) -> None:
    """One module's {bits: (codes, lut, objective)} as safetensors, written atomically."""
    from safetensors.numpy import save_file

    tensors = {}
    for b, (codes, lut, objective) in stored.items():
        tensors |= {f"codes{b}": codes, f"lut{b}": lut, f"objective{b}": np.array([objective])}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"key": key})
        apply_umask(tmp)  # safetensors writes 0600; every file of ours follows the umask


def _load_cached(path: Path, key: str) -> dict[int, tuple[np.ndarray, np.ndarray, float]]:
    """Every bit-width the cached file holds when it exists and its key matches, else {}."""
    from safetensors import safe_open

    if not path.is_file():
        return {}
    with safe_open(str(path), framework="np") as handle:
        if (handle.metadata() or {}).get("key") != key:
            return {}
        widths = sorted(int(k[len("codes"):]) for k in handle.keys() if k.startswith("codes"))
        return {b: (handle.get_tensor(f"codes{b}"), handle.get_tensor(f"lut{b}"),
                    float(handle.get_tensor(f"objective{b}")[0])) for b in widths}


def flash1dkmeans_seed(w: np.ndarray, weights: np.ndarray, bits: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seed clustering by `flash1dkmeans` (the paper's implementation's 1-D k-means), row by row.

    A cross-check of our Lloyd baseline: w, weights [N, K] -> codes uint8[N, K],
    lut f32[N, 2**bits] (ascending). Needs the optional `flash1dkmeans` package. Slow
    (one call per row): use it on a few rows.
    """
    from flash1dkmeans import kmeans_1d

    n_clusters = 1 << bits
    codes = np.zeros(w.shape, dtype=np.uint8)
    lut = np.zeros((w.shape[0], n_clusters), dtype=np.float32)
    for row in range(w.shape[0]):
        xs = w[row].astype(np.float64)
        fs = weights[row].astype(np.float64) if weights[row].sum() > 0 else np.ones_like(xs)
        centroids, labels = kmeans_1d(xs, n_clusters, max_iter=50, sample_weights=fs, random_state=seed)
        order = np.argsort(centroids, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        codes[row] = rank[labels]
        lut[row] = np.asarray(centroids)[order]
    return codes, lut
