"""Tests for anyprec.clustering: optimality, nesting, LUT invariants, baselines, validation."""

import itertools

import numpy as np
import pytest

from anyprec import clustering as C
from anyprec.clustering import ClusterMethod

OPT, LLOYD = ClusterMethod.OPTIMAL, ClusterMethod.LLOYD
# Objectives are compared up to double-precision noise relative to the row's energy.
REL_TOL = 1e-9


def _energy(w: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Per-row sum f w^2: the scale of rounding error in any objective of that row."""
    return np.sum(f * w.astype(np.float64) ** 2, axis=1) + 1e-300


def _assert_leq(a: np.ndarray, b: np.ndarray, w: np.ndarray, f: np.ndarray) -> None:
    """Row by row a <= b up to rounding."""
    bad = a > b + REL_TOL * _energy(w, f)
    assert not bad.any(), f"rows {np.flatnonzero(bad)[:5]}: {a[bad][:5]} > {b[bad][:5]}"


def _brute_force(x: np.ndarray, f: np.ndarray, k: int) -> float:
    """Least weighted k-means cost of x over every contiguous partition of the sorted row."""
    order = np.argsort(x, kind="stable")
    x, f = x[order].astype(np.float64), f[order]
    n = len(x)
    best = np.inf
    for m in range(1, min(k, n) + 1):
        for cuts in itertools.combinations(range(1, n), m - 1):
            edges = (0, *cuts, n)
            cost = 0.0
            for a, e in zip(edges[:-1], edges[1:]):
                sw = f[a:e].sum()
                c = (f[a:e] * x[a:e]).sum() / sw if sw > 0 else x[a:e].mean()
                cost += (f[a:e] * (x[a:e] - c) ** 2).sum()
            best = min(best, cost)
    return best


def _adversarial_rows(rng: np.random.Generator, k: int) -> tuple[np.ndarray, np.ndarray]:
    """[R, k] rows that stress ties, zeros, constants, zero weights and dynamic range."""
    rows, weights = [], []
    rows.append(rng.choice([-1.0, 0.0, 0.5, 2.0], k))  # heavy ties
    weights.append(rng.random(k))
    rows.append(np.where(rng.random(k) < 0.5, 0.0, rng.standard_normal(k)))  # many zeros
    weights.append(rng.random(k))
    rows.append(np.full(k, 0.25))  # constant row
    weights.append(rng.random(k))
    rows.append(rng.standard_normal(k))  # all-zero weights
    weights.append(np.zeros(k))
    rows.append(rng.standard_normal(k))  # some zero weights
    weights.append(np.where(rng.random(k) < 0.6, 0.0, rng.random(k)))
    rows.append(rng.choice([-1, 1], k) * 10.0 ** rng.uniform(-8, 3, k))  # huge value range
    weights.append(rng.random(k))
    rows.append(rng.standard_normal(k))  # huge weight range
    weights.append(10.0 ** rng.uniform(-10, 10, k))
    rows.append(rng.standard_t(3, k))  # heavy tails, like LLM weight rows
    weights.append(rng.standard_normal(k) ** 2)
    return np.array(rows, dtype=np.float32), np.array(weights)


def _row_sets(rng: np.random.Generator):
    """(w, f) pairs: random rows and adversarial rows, several lengths including K < 2**bits."""
    for k in (5, 37, 300):
        w = (rng.standard_normal((6, k)) * rng.lognormal(0, 2, (6, 1))).astype(np.float32)
        yield w, rng.random((6, k)) ** 3
        yield _adversarial_rows(rng, k)


def _effective(f: np.ndarray) -> np.ndarray:
    """Weights as the seed uses them: all-zero rows count as all ones."""
    return np.where(f.sum(axis=1, keepdims=True) > 0, f, 1.0)


def _assert_centroids_are_means(w, f, codes, lut) -> None:
    """Every non-empty cluster's LUT entry is its members' weighted (or plain) mean."""
    for r in range(w.shape[0]):
        for c in np.unique(codes[r]):
            members = codes[r] == c
            x, g = w[r, members].astype(np.float64), f[r, members]
            mean = (g * x).sum() / g.sum() if g.sum() > 0 else x.mean()
            assert np.isclose(lut[r, c], mean, rtol=1e-5, atol=1e-6 * np.abs(x).max()), (r, c)


def _assert_sorted_finite(lut: np.ndarray) -> None:
    assert np.all(np.isfinite(lut))
    assert np.all(np.diff(lut, axis=1) >= 0)


@pytest.mark.parametrize("bits", [1, 2])
def test_optimal_seed_matches_brute_force(bits):
    rng = np.random.default_rng(bits)
    k = 1 << bits
    for trial in range(60):
        n = int(rng.integers(1, 11))
        x = rng.choice([-1.0, 0.0, 0.3, 2.0], n) if trial % 3 == 0 else rng.standard_normal(n)
        f = np.where(rng.random(n) < 0.2, 0.0, rng.random(n))
        f = _effective(f[None])[0]
        w = x[None].astype(np.float32)
        codes, lut = C.quantize_seed(w, f[None], bits, OPT)
        got = C.weighted_objective(w, f[None], codes, lut)[0]
        want = _brute_force(w[0], f, k)
        assert got <= want + 1e-6 * (want + _energy(w, f[None])[0] * 1e-6), (x, f, got, want)


def test_seed_optimal_never_worse_than_lloyd():
    rng = np.random.default_rng(0)
    for w, f in _row_sets(rng):
        for bits in (1, 2, 3, 4):
            objective = {}
            for method in (OPT, LLOYD):
                codes, lut = C.quantize_seed(w, f, bits, method)
                _assert_sorted_finite(lut)
                _assert_centroids_are_means(w, _effective(f), codes, lut)
                objective[method] = C.weighted_objective(w, _effective(f), codes, lut)
            _assert_leq(objective[OPT], objective[LLOYD], w, _effective(f))


def test_optimal_split_never_worse_than_lloyd_split():
    """From the same seed, one upscaling step: each cluster's exact split beats the binary search."""
    rng = np.random.default_rng(1)
    for w, f in _row_sets(rng):
        f = _effective(f)
        for method in (OPT, LLOYD):
            codes, lut = C.quantize_seed(w, f, 3, method)
            objective = {}
            for split in (OPT, LLOYD):
                up_codes, luts = C.upscale(w, f, codes, lut, 3, 4, split)
                objective[split] = C.weighted_objective(w, f, up_codes, luts[4])
            _assert_leq(objective[OPT], objective[LLOYD], w, f)


def test_optimal_split_matches_brute_force():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((20, 9)).astype(np.float32)
    f = rng.random((20, 9))
    codes, lut = C.quantize_seed(w, f, 1, OPT)
    up_codes, luts = C.upscale(w, f, codes, lut, 1, 2, OPT)
    got = C.weighted_objective(w, f, up_codes, luts[2])
    for r in range(20):
        want = sum(_brute_force(w[r, codes[r] == c], f[r, codes[r] == c], 2) for c in (0, 1))
        assert got[r] <= want * (1 + 1e-6) + 1e-12


@pytest.mark.parametrize("method", [OPT, LLOYD])
def test_nested_identity_and_luts(method):
    rng = np.random.default_rng(3)
    for w, f in _row_sets(rng):
        codes, luts = C.quantize_nested(w, f, 3, 8, method)
        assert codes.dtype == np.uint8 and codes.shape == w.shape
        assert sorted(luts) == list(range(3, 9))
        seed_codes, seed_lut = C.quantize_seed(w, f, 3, method)
        np.testing.assert_array_equal(codes >> 5, seed_codes)
        np.testing.assert_array_equal(luts[3], seed_lut)
        for b in range(3, 9):
            assert luts[b].shape == (w.shape[0], 1 << b) and luts[b].dtype == np.float32
            _assert_sorted_finite(luts[b])
            _assert_centroids_are_means(w, _effective(f), codes >> (8 - b), luts[b])
        again_codes, again_luts = C.upscale(w, _effective(f), seed_codes, seed_lut, 3, 8, method)
        np.testing.assert_array_equal(again_codes, codes)
        for b in range(3, 9):
            np.testing.assert_array_equal(again_luts[b], luts[b])


@pytest.mark.parametrize("method", [OPT, LLOYD])
def test_upscaling_never_increases_objective(method):
    rng = np.random.default_rng(4)
    for w, f in _row_sets(rng):
        codes, luts = C.quantize_nested(w, f, 2, 6, method)
        prev = None
        for b in range(2, 7):
            obj = C.weighted_objective(w, _effective(f), codes >> (6 - b), luts[b])
            if prev is not None:
                _assert_leq(obj, prev, w, _effective(f))
            prev = obj


def test_short_rows_use_one_cluster_per_value():
    w = np.array([[3.0, -1.0, 2.0]], dtype=np.float32)
    for method in (OPT, LLOYD):
        codes, luts = C.quantize_nested(w, np.ones_like(w), 3, 8, method)
        assert C.weighted_objective(w, np.ones_like(w), codes, luts[8])[0] == 0.0
        assert list(luts[3][0, :3]) == [-1.0, 2.0, 3.0]
        assert np.all(luts[3][0, 3:] == 3.0)


def test_results_do_not_depend_on_chunking(monkeypatch):
    rng = np.random.default_rng(5)
    w = rng.standard_normal((40, 64)).astype(np.float32)
    f = rng.random((40, 64))
    whole = [C.quantize_nested(w, f, 3, 5, m) for m in (OPT, LLOYD)]
    monkeypatch.setattr(C, "_CHUNK_ELEMENTS", 64 * 7)
    for (codes, luts), m in zip(whole, (OPT, LLOYD)):
        codes2, luts2 = C.quantize_nested(w, f, 3, 5, m)
        np.testing.assert_array_equal(codes2, codes)
        for b in luts:
            np.testing.assert_array_equal(luts2[b], luts[b])


def test_sample_weights():
    w = np.array([[0.0, 1.0, 2.0], [0.0, 0.0, 3.0], [1.0, 2.0, 3.0]], dtype=np.float32)
    fisher = np.array([[5.0, 2.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    f = C.sample_weights(w, fisher)
    assert f.dtype == np.float64
    np.testing.assert_array_equal(f, [[0.0, 2.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])


def test_rtn_baseline():
    rng = np.random.default_rng(6)
    w = rng.standard_normal((10, 50)).astype(np.float32)
    w[3] = 0.7
    for bits in (2, 4, 8):
        codes, lut = C.quantize_rtn(w, bits)
        assert codes.dtype == np.uint8 and lut.shape == (10, 1 << bits)
        _assert_sorted_finite(lut)
        step = (w.max(axis=1) - w.min(axis=1)) / ((1 << bits) - 1)
        err = np.abs(np.take_along_axis(lut, codes.astype(np.int64), axis=1) - w)
        assert np.all(err <= step[:, None] / 2 + 1e-6)
        np.testing.assert_allclose(lut[:, 0], w.min(axis=1))
        np.testing.assert_allclose(lut[:, -1], w.max(axis=1), rtol=1e-6)
    ones = np.ones_like(w, dtype=np.float64)
    rtn_codes, rtn_lut = C.quantize_rtn(w, 3)
    opt_codes, opt_lut = C.quantize_seed(w, ones, 3, OPT)
    _assert_leq(
        C.weighted_objective(w, ones, opt_codes, opt_lut), C.weighted_objective(w, ones, rtn_codes, rtn_lut), w, ones
    )


def test_lloyd_is_deterministic():
    rng = np.random.default_rng(7)
    w = rng.standard_normal((30, 100)).astype(np.float32)
    f = rng.random((30, 100))
    a = C.quantize_seed(w, f, 3, LLOYD)
    b = C.quantize_seed(w, f, 3, "lloyd")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_input_validation():
    w = np.zeros((2, 4), dtype=np.float32)
    f = np.ones((2, 4))
    codes = np.zeros((2, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match="shape"):
        C.quantize_seed(w, np.ones((2, 5)), 3, OPT)
    with pytest.raises(ValueError, match="1..8"):
        C.quantize_seed(w, f, 0, OPT)
    with pytest.raises(ValueError, match="1..8"):
        C.quantize_nested(w, f, 3, 9, OPT)
    with pytest.raises(ValueError, match="2-D"):
        C.quantize_rtn(np.zeros(4), 3)
    with pytest.raises(ValueError, match="NaN"):
        C.quantize_seed(np.full((2, 4), np.nan), f, 3, OPT)
    with pytest.raises(ValueError, match=">= 0"):
        C.sample_weights(w + 1, -f)
    with pytest.raises(ValueError, match="must be >="):
        C.upscale(w, f, codes, np.zeros((2, 8)), 3, 2, OPT)
    with pytest.raises(ValueError, match="lut shape"):
        C.upscale(w, f, codes, np.zeros((2, 4)), 3, 4, OPT)
    with pytest.raises(ValueError, match="codes must lie"):
        C.upscale(w, f, codes + 8, np.zeros((2, 8)), 3, 4, OPT)
    with pytest.raises(ValueError):
        C.quantize_seed(w, f, 3, "kmeans")
