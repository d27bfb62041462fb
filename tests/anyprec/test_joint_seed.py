"""Joint seed (anyprec.clustering, joint_weight): exact optimum of w * obj(seed) + obj(seed + 1)."""

import itertools

import numpy as np
import pytest
from pydantic import ValidationError

from anyprec import clustering as C
from anyprec.config import QuantizationConfig


def _cost(x: np.ndarray, f: np.ndarray) -> float:
    """Weighted within-cluster sum of squares of one cluster (0 for an empty one)."""
    if len(x) == 0:
        return 0.0
    c = (f * x).sum() / f.sum() if f.sum() > 0 else x.mean()
    return float((f * (x - c) ** 2).sum())


def _best_split(x: np.ndarray, f: np.ndarray) -> float:
    return min([_cost(x, f)] + [_cost(x[:s], f[:s]) + _cost(x[s:], f[s:]) for s in range(1, len(x))])


def _brute_joint(x: np.ndarray, f: np.ndarray, k: int, lam: float) -> float:
    """Least lam * cost + best split cost over every partition of the sorted row into k ranges."""
    order = np.argsort(x, kind="stable")
    x, f = x[order].astype(np.float64), f[order]
    best = np.inf
    for cuts in itertools.combinations(range(1, len(x)), k - 1):
        edges = (0, *cuts, len(x))
        ranges = [(x[a:e], f[a:e]) for a, e in zip(edges[:-1], edges[1:])]
        best = min(best, sum(lam * _cost(*r) + _best_split(*r) for r in ranges))
    return best


def _joint_objective(w, f, lam, seed=2):
    codes, luts = C.quantize_nested(w, f, seed, seed + 1, joint_weight=lam)
    o_seed = C.weighted_objective(w, f, codes >> 1, luts[seed])
    o_next = C.weighted_objective(w, f, codes, luts[seed + 1])
    return lam * o_seed + o_next, o_seed, o_next


@pytest.mark.parametrize("lam", [0.0, 0.3, 2.0])
def test_joint_seed_matches_brute_force(lam):
    rng = np.random.default_rng(7)
    for trial in range(40):
        n = int(rng.integers(5, 11))
        x = rng.choice([-1.0, 0.0, 0.3, 2.0], n) if trial % 4 == 0 else rng.standard_t(3, n)
        f = np.where(rng.random(n) < 0.2, 0.0, rng.random(n)) + (trial % 4 == 1)
        w, f2 = x[None].astype(np.float32), f[None]
        got = _joint_objective(w, f2, lam)[0][0]
        want = _brute_joint(w[0].astype(np.float64), f, 4, lam)
        assert got <= want + 1e-9 * (1 + want), (x, f, got, want)


def test_weight_zero_makes_the_next_width_exactly_optimal():
    rng = np.random.default_rng(8)
    w = (rng.standard_t(4, (12, 200)) * 0.02).astype(np.float32)
    f = rng.random((12, 200)) ** 2
    _, _, nested4 = _joint_objective(w, f, 0.0, seed=3)
    codes, lut = C.quantize_seed(w, f, 4)
    dedicated4 = C.weighted_objective(w, f, codes, lut)
    np.testing.assert_allclose(nested4, dedicated4, rtol=1e-9)


def test_joint_never_worse_than_plain_seed_on_its_objective():
    rng = np.random.default_rng(9)
    w = (rng.standard_t(3, (16, 300)) * rng.lognormal(0, 1, (16, 1))).astype(np.float32)
    f = rng.random((16, 300)) ** 3
    for lam in (0.0, 0.25, 1.0):
        joint, _, _ = _joint_objective(w, f, lam, seed=3)
        codes, luts = C.quantize_nested(w, f, 3, 4)
        plain = lam * C.weighted_objective(w, f, codes >> 1, luts[3]) + C.weighted_objective(w, f, codes, luts[4])
        assert np.all(joint <= plain * (1 + 1e-9)), lam
        assert joint.sum() < plain.sum()  # and strictly better somewhere: the plain seed is not joint-optimal


def test_joint_seed_keeps_nesting_and_lut_invariants():
    rng = np.random.default_rng(10)
    w = rng.standard_normal((6, 80)).astype(np.float32)
    f = rng.random((6, 80))
    codes, luts = C.quantize_nested(w, f, 3, 8, joint_weight=0.25)
    seed_codes, seed_lut = C.quantize_seed(w, f, 3, joint_weight=0.25)
    np.testing.assert_array_equal(codes >> 5, seed_codes)
    np.testing.assert_array_equal(luts[3], seed_lut)
    for b in range(3, 9):
        assert np.all(np.diff(luts[b], axis=1) >= 0)


@pytest.mark.parametrize("kwargs, message", [
    ({"joint_weight": -1.0}, ">= 0"),
    ({"joint_weight": float("nan")}, ">= 0"),
    ({"joint_weight": 0.5, "method": C.ClusterMethod.LLOYD}, "method='optimal'"),
])
def test_bad_joint_weight_is_refused(kwargs, message):
    w = np.ones((2, 8), dtype=np.float32)
    with pytest.raises(ValueError, match=message):
        C.quantize_seed(w, np.ones((2, 8)), 3, **kwargs)


def test_config_refuses_joint_with_lloyd():
    with pytest.raises(ValidationError, match="joint_weight: null"):
        QuantizationConfig(method="lloyd", joint_weight=0.25)
    assert QuantizationConfig(method="lloyd", joint_weight=None).joint_weight is None


def test_plain_seed_dumps_stay_as_before():
    """Cache keys and manifests of plain-seed quantizations do not change with the new key."""
    assert "joint_weight" not in QuantizationConfig().model_dump()
    assert QuantizationConfig(joint_weight=0.5).model_dump()["joint_weight"] == 0.5


def test_pipeline_quantizes_with_a_joint_seed(tiny_model_dir, tiny_artifact, tmp_path):
    from anyprec.packed import read_manifest
    from tests.conftest import quantize_tiny

    out = quantize_tiny(tiny_model_dir, tmp_path, joint_weight=0.0)
    joint, plain = read_manifest(out), read_manifest(tiny_artifact)
    assert joint["inputs"]["quantization"]["joint_weight"] == 0.0
    # weight 0: 4 bits are exactly optimal, so never worse than the plain seed's 4 bits
    assert joint["objective"]["4"] <= plain["objective"]["4"] * (1 + 1e-9)
    assert joint["objective"]["3"] >= plain["objective"]["3"] * (1 - 1e-9)
