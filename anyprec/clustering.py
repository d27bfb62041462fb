"""Weighted 1-D clustering of weight rows: seed quantization, nested upscaling, RTN.

Numpy in, numpy out, float64 math inside. Each output row w (length K) of a weight
matrix is clustered on its own: 2**bits clusters minimising
sum_j f_j (w_j - c(j))^2, every cluster a contiguous range of the sorted row,
centroids sorted ascending (a code is its centroid's rank) and equal to the weighted
mean of their members. See docs/ALGORITHM.md sections 3 and 4.

Two methods: OPTIMAL (exact DP seed, exact best split when upscaling) and LLOYD
(the reference: k-means++ + Lloyd seed, binary-search Lloyd split). With OPTIMAL the
seed can also be *joint* (`joint_weight` w): its clusters then minimise
w * objective(seed) + objective(seed + 1), the next width being each cluster's best
split, instead of objective(seed) alone; this lowers the objective gap to a dedicated
quantization one bit above the seed (to 0 at w = 0; docs/QUALITY.md). w > 0 costs O(K^2)
time and 8 (K + 1)^2 bytes of scratch per row and thread, against O(2**bits K log K) for
the plain seed (w = 0: about twice the plain seed). The heavy loops
are numba kernels in `_clustering_kernels`, run over rows in parallel
(NUMBA_NUM_THREADS threads).
"""

from enum import Enum

import numpy as np

from anyprec import _clustering_kernels as kern

MAX_BITS = 8
LLOYD_MAX_ITER = 50  # the reference's iteration cap
LLOYD_SEED = 0  # fixed so the baseline is deterministic
# Rows per kernel call are bounded so that float64 scratch copies stay ~ tens of MB.
_CHUNK_ELEMENTS = 1 << 22


class ClusterMethod(str, Enum):
    """How clusters are found: exact optimum, or the reference's Lloyd iterations."""

    OPTIMAL = "optimal"
    LLOYD = "lloyd"


_METHOD_CODE = {ClusterMethod.OPTIMAL: kern.METHOD_OPTIMAL, ClusterMethod.LLOYD: kern.METHOD_LLOYD}


def _check_matrix(name: str, a: np.ndarray) -> np.ndarray:
    """Return a as a finite 2-D array, or raise naming the problem."""
    a = np.asarray(a)
    if a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"{name} must be a 2-D [N, K] array with K >= 1, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} has NaN or inf entries; clean the input (e.g. np.nan_to_num) first")
    return a


def _check_weights(w: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Validate weights against w: same shape, finite, non-negative; return float64."""
    weights = _check_matrix("weights", weights)
    if weights.shape != w.shape:
        raise ValueError(f"weights shape {weights.shape} does not match w shape {w.shape}")
    if np.any(weights < 0):
        raise ValueError("weights must be >= 0 (squared gradients); got negative entries")
    return weights.astype(np.float64, copy=False)


def _check_bits(name: str, bits: int) -> int:
    """Return bits as int if 1 <= bits <= 8, else raise."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"{name} must be an integer in 1..{MAX_BITS}, got {bits!r}")
    return int(bits)


def _check_codes(w: np.ndarray, codes: np.ndarray, lut: np.ndarray, bits: int) -> None:
    """Check codes/LUT shapes against w and a bit-width."""
    codes, lut = np.asarray(codes), np.asarray(lut)
    if codes.shape != w.shape:
        raise ValueError(f"codes shape {codes.shape} does not match w shape {w.shape}")
    if lut.shape != (w.shape[0], 1 << bits):
        raise ValueError(f"lut shape {lut.shape} must be (N, 2**bits) = {(w.shape[0], 1 << bits)}")
    if codes.size and (codes.min() < 0 or codes.max() >= 1 << bits):
        raise ValueError(f"codes must lie in [0, {1 << bits}) for {bits} bits, got max {codes.max()}")


def _row_chunks(n_rows: int, n_cols: int) -> list[slice]:
    """Row slices holding about _CHUNK_ELEMENTS elements each."""
    step = max(1, _CHUNK_ELEMENTS // max(n_cols, 1))
    return [slice(i, min(i + step, n_rows)) for i in range(0, n_rows, step)]


def _ones_for_empty_rows(weights: np.ndarray) -> np.ndarray:
    """Rows whose weights sum to 0 get weight 1 everywhere (docs/ALGORITHM.md section 3)."""
    dead = weights.sum(axis=1) <= 0
    if np.any(dead):
        weights = weights.copy()
        weights[dead] = 1.0
    return weights


def sample_weights(w: np.ndarray, fisher: np.ndarray) -> np.ndarray:
    """Sample weights f = F * [w != 0]; a row summing to 0 becomes all ones.

    w, fisher: [N, K] (fisher = accumulated squared gradients, >= 0). Returns f64[N, K].
    """
    w = _check_matrix("w", w)
    f = _check_weights(w, fisher) * (w != 0)
    return _ones_for_empty_rows(f)


def _sorted_rows(w: np.ndarray, weights: np.ndarray, codes: np.ndarray | None = None):
    """Sort each row ascending (by (code, value) when codes are given): (order, xs, fs) in f64."""
    w64 = w.astype(np.float64)
    if codes is None:
        # Stable, so equal values keep column order exactly as lexsort does in upscale:
        # upscaling a seed then reproduces quantize_nested bit for bit.
        order = np.argsort(w, axis=1, kind="stable")
    else:
        order = np.lexsort((w64, codes), axis=-1)
    xs = np.ascontiguousarray(np.take_along_axis(w64, order, axis=1))
    fs = np.ascontiguousarray(np.take_along_axis(weights, order, axis=1))
    return order, xs, fs


def _unsort(order: np.ndarray, sorted_codes: np.ndarray) -> np.ndarray:
    """Codes back in the original column order."""
    codes = np.empty_like(sorted_codes)
    np.put_along_axis(codes, order, sorted_codes, axis=1)
    return codes


def _kernel_weight(name: str, value: float | None, method: ClusterMethod, plain: str, step: str) -> float:
    """A clustering kernel's weight option (joint_weight, lookahead_weight): -1 for the plain
    algorithm (None), else the value, which must be >= 0 and needs the optimal method."""
    if value is None:
        return -1.0
    if method != ClusterMethod.OPTIMAL:
        raise ValueError(f"{name} needs method='optimal' (the Lloyd {step} is the reference's, kept as is)")
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (or None for {plain}), got {value!r}")
    return float(value)


def _check_joint(joint_weight: float | None, method: ClusterMethod) -> float:
    return _kernel_weight("joint_weight", joint_weight, method, "the plain seed", "seed")


def _check_lookahead(lookahead_weight: float | None, method: ClusterMethod) -> float:
    return _kernel_weight("lookahead_weight", lookahead_weight, method, "plain splits", "split")


def _seed_sorted(xs, fs, bits: int, method: ClusterMethod, row_offset: int, lam: float = -1.0):
    """Seed kernel on sorted rows: (sorted codes uint8[n, K], lut f64[n, 2**bits])."""
    k = 1 << bits
    codes = np.empty(xs.shape, dtype=np.uint8)
    lut = np.empty((xs.shape[0], k), dtype=np.float64)
    kern.seed_rows(xs, fs, k, _METHOD_CODE[method], LLOYD_MAX_ITER, LLOYD_SEED, row_offset, lam, codes, lut)
    return codes, lut


def _upscale_sorted(xs, fs, codes, lut, from_bits: int, to_bits: int, method: ClusterMethod, lam: float = -1.0):
    """Upscale kernel on sorted rows: (sorted codes at to_bits, {b: f64 LUT} for b > from_bits)."""
    out = np.empty(xs.shape, dtype=np.uint8)
    heap = np.zeros((xs.shape[0], 1 << (to_bits + 1)), dtype=np.float64)
    lut64 = np.ascontiguousarray(lut, dtype=np.float64)
    kern.upscale_rows(xs, fs, codes, lut64, from_bits, to_bits, _METHOD_CODE[method], lam, out, heap)
    luts = {b: heap[:, 1 << b : 1 << (b + 1)] for b in range(from_bits + 1, to_bits + 1)}
    return out, luts


def quantize_seed(
    w: np.ndarray,
    weights: np.ndarray,
    bits: int,
    method: ClusterMethod = ClusterMethod.OPTIMAL,
    joint_weight: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster each row into 2**bits weighted clusters.

    w: [N, K] weights of a layer; weights: [N, K] sample weights >= 0 (rows summing
    to 0 are treated as all ones). Returns codes uint8[N, K] and lut f32[N, 2**bits],
    sorted ascending per row. With K < 2**bits the extra clusters are empty and get
    duplicated values that keep the LUT sorted. joint_weight (OPTIMAL only): None for
    the exact optimum at `bits`; w >= 0 for the joint seed (module docstring).
    """
    w = _check_matrix("w", w)
    weights = _ones_for_empty_rows(_check_weights(w, weights))
    bits = _check_bits("bits", bits)
    method = ClusterMethod(method)
    lam = _check_joint(joint_weight, method)
    codes = np.empty(w.shape, dtype=np.uint8)
    lut = np.empty((w.shape[0], 1 << bits), dtype=np.float32)
    for rows in _row_chunks(*w.shape):
        order, xs, fs = _sorted_rows(w[rows], weights[rows])
        sorted_codes, lut[rows] = _seed_sorted(xs, fs, bits, method, rows.start, lam)
        codes[rows] = _unsort(order, sorted_codes)
    return codes, lut


def upscale(
    w: np.ndarray,
    weights: np.ndarray,
    codes: np.ndarray,
    lut: np.ndarray,
    from_bits: int,
    to_bits: int,
    method: ClusterMethod = ClusterMethod.OPTIMAL,
    lookahead_weight: float | None = None,
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Split every cluster in two, bit by bit, from from_bits up to to_bits.

    Cluster c's children are 2c (smaller values) and 2c + 1, so
    codes_b == codes_to >> (to_bits - b). A cluster whose weights sum to 0 is split
    unweighted. Returns codes uint8[N, K] at to_bits and {b: f32[N, 2**b]} for
    from_bits <= b <= to_bits (the from_bits entry is the given lut).
    lookahead_weight v (OPTIMAL only; None: every split is the best one for its own
    width): the first step's split of each cluster minimises v * its cost + the cost of
    its two children each split again in two, trading from_bits + 1 for from_bits + 2.
    """
    w = _check_matrix("w", w)
    weights = _check_weights(w, weights)
    from_bits = _check_bits("from_bits", from_bits)
    to_bits = _check_bits("to_bits", to_bits)
    if to_bits < from_bits:
        raise ValueError(f"to_bits ({to_bits}) must be >= from_bits ({from_bits})")
    _check_codes(w, codes, lut, from_bits)
    method = ClusterMethod(method)
    lam = _check_lookahead(lookahead_weight, method)
    codes = np.asarray(codes).astype(np.uint8, copy=False)
    out = np.empty(w.shape, dtype=np.uint8)
    luts = {b: np.empty((w.shape[0], 1 << b), dtype=np.float32) for b in range(from_bits, to_bits + 1)}
    luts[from_bits][:] = lut
    for rows in _row_chunks(*w.shape):
        order, xs, fs = _sorted_rows(w[rows], weights[rows], codes[rows])
        sorted_codes = np.ascontiguousarray(np.take_along_axis(codes[rows], order, axis=1))
        new_codes, new_luts = _upscale_sorted(xs, fs, sorted_codes, lut[rows], from_bits, to_bits, method, lam)
        out[rows] = _unsort(order, new_codes)
        for b, table in new_luts.items():
            luts[b][rows] = table
    return out, luts


def quantize_nested(
    w: np.ndarray,
    weights: np.ndarray,
    seed_bits: int,
    parent_bits: int,
    method: ClusterMethod = ClusterMethod.OPTIMAL,
    joint_weight: float | None = None,
    lookahead_weight: float | None = None,
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Seed quantization at seed_bits, then upscaling to parent_bits (one sort per row).

    Returns parent codes uint8[N, K] and {b: f32[N, 2**b]} for seed_bits..parent_bits.
    joint_weight: as in `quantize_seed`; lookahead_weight: as in `upscale`.
    """
    w = _check_matrix("w", w)
    weights = _ones_for_empty_rows(_check_weights(w, weights))
    seed_bits = _check_bits("seed_bits", seed_bits)
    parent_bits = _check_bits("parent_bits", parent_bits)
    if parent_bits < seed_bits:
        raise ValueError(f"parent_bits ({parent_bits}) must be >= seed_bits ({seed_bits})")
    method = ClusterMethod(method)
    lam = _check_joint(joint_weight, method)
    ahead = _check_lookahead(lookahead_weight, method)
    codes = np.empty(w.shape, dtype=np.uint8)
    luts = {b: np.empty((w.shape[0], 1 << b), dtype=np.float32) for b in range(seed_bits, parent_bits + 1)}
    for rows in _row_chunks(*w.shape):
        order, xs, fs = _sorted_rows(w[rows], weights[rows])
        seed_codes, luts[seed_bits][rows] = _seed_sorted(xs, fs, seed_bits, method, rows.start, lam)
        lut64 = luts[seed_bits][rows].astype(np.float64)
        parent_codes, new_luts = _upscale_sorted(xs, fs, seed_codes, lut64, seed_bits, parent_bits, method, ahead)
        codes[rows] = _unsort(order, parent_codes)
        for b, table in new_luts.items():
            luts[b][rows] = table
    return codes, luts


def quantize_rtn(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row uniform min-max round-to-nearest baseline.

    Returns codes uint8[N, K] and lut f32[N, 2**bits] = the row's uniform grid from
    min to max (all entries equal for a constant row).
    """
    w = _check_matrix("w", w).astype(np.float64)
    bits = _check_bits("bits", bits)
    levels = (1 << bits) - 1
    lo = w.min(axis=1, keepdims=True)
    step = (w.max(axis=1, keepdims=True) - lo) / levels
    safe = np.where(step > 0, step, 1.0)
    codes = np.clip(np.rint((w - lo) / safe), 0, levels).astype(np.uint8)
    lut = lo + step * np.arange(levels + 1, dtype=np.float64)
    return codes, lut.astype(np.float32)


def weighted_objective(w: np.ndarray, weights: np.ndarray, codes: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Per-row sum_j f_j (w_j - lut[code_j])^2 in float64. Returns f64[N]."""
    w = _check_matrix("w", w)
    weights = _check_weights(w, weights)
    lut = np.asarray(lut)
    bits = int(np.log2(lut.shape[1])) if lut.ndim == 2 and lut.shape[1] > 0 else -1
    if bits < 0 or lut.shape[1] != 1 << bits:
        raise ValueError(f"lut must be [N, 2**bits], got shape {lut.shape}")
    _check_codes(w, codes, lut, bits)
    q = np.take_along_axis(lut.astype(np.float64), np.asarray(codes).astype(np.int64), axis=1)
    return np.sum(weights * (w.astype(np.float64) - q) ** 2, axis=1)
