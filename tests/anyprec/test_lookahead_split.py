"""Look-ahead upscaling (anyprec.clustering, lookahead_weight): the first split of each seed
cluster minimises v * obj(seed + 1) + obj(seed + 2), the seed itself untouched."""

import numpy as np
import pytest

from anyprec import clustering as C


def _cost(x: np.ndarray, f: np.ndarray) -> float:
    """Weighted within-cluster sum of squares of one cluster (0 for an empty one)."""
    if len(x) == 0:
        return 0.0
    c = (f * x).sum() / f.sum() if f.sum() > 0 else x.mean()
    return float((f * (x - c) ** 2).sum())


def _best_split(x: np.ndarray, f: np.ndarray) -> float:
    return min([_cost(x, f)] + [_cost(x[:s], f[:s]) + _cost(x[s:], f[s:]) for s in range(1, len(x))])


def _brute_cluster(x: np.ndarray, f: np.ndarray, lam: float) -> float:
    """Least v * (cost of the two halves) + (each half's best split) over every cut of one cluster."""
    if len(x) < 2:
        return 0.0
    return min(lam * (_cost(x[:s], f[:s]) + _cost(x[s:], f[s:])) + _best_split(x[:s], f[:s])
               + _best_split(x[s:], f[s:]) for s in range(1, len(x)))


def _rows(seed: int, n: int = 5, k: int = 14):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32)
    f = rng.exponential(size=(n, k)) * (rng.random((n, k)) > 0.15)  # some zero weights
    return w, f


@pytest.mark.parametrize(("lam", "k"), [(0.0, 14), (0.3, 14), (2.0, 14), (0.25, 160)])
def test_first_split_is_the_exact_lookahead_optimum(lam, k):
    w, f = _rows(1, n=5 if k < 100 else 2, k=k)  # k = 160: clusters of ~80, many levels of the cut search
    seed_codes, seed_lut = C.quantize_seed(w, f, 1)
    codes, luts = C.upscale(w, f, seed_codes, seed_lut, 1, 3, lookahead_weight=lam)
    got = lam * C.weighted_objective(w, f, codes >> 1, luts[2]) + C.weighted_objective(w, f, codes, luts[3])
    for r in range(w.shape[0]):
        want = 0.0
        for c in range(2):  # each seed cluster on its own, members sorted by value
            members = np.flatnonzero(seed_codes[r] == c)
            order = members[np.argsort(w[r, members], kind="stable")]
            want += _brute_cluster(w[r, order].astype(np.float64), f[r, order], lam)
        assert got[r] == pytest.approx(want, rel=1e-9, abs=1e-12)
    # the seed stays the seed, and the widths stay nested
    np.testing.assert_array_equal(codes >> 2, seed_codes)
    np.testing.assert_array_equal(luts[1], seed_lut)
    assert np.all(np.diff(luts[3], axis=1) >= 0)


def test_lookahead_trades_the_next_width_for_the_one_after():
    w, f = _rows(2, n=64, k=96)
    plain_codes, plain = C.quantize_nested(w, f, 2, 5)
    ahead_codes, ahead = C.quantize_nested(w, f, 2, 5, lookahead_weight=0.25)

    def obj(codes, luts, b):
        return C.weighted_objective(w, f, codes >> (5 - b), luts[b]).sum()

    assert obj(ahead_codes, ahead, 2) == obj(plain_codes, plain, 2)  # seed untouched
    assert obj(ahead_codes, ahead, 3) >= obj(plain_codes, plain, 3)  # plain split: best for seed + 1
    assert obj(ahead_codes, ahead, 4) < obj(plain_codes, plain, 4)
    # a huge weight is the plain split
    big_codes, big = C.quantize_nested(w, f, 2, 5, lookahead_weight=1e9)
    np.testing.assert_array_equal(big_codes, plain_codes)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bad_lookahead_weight_is_refused(bad):
    w, f = _rows(3)
    with pytest.raises(ValueError, match="lookahead_weight"):
        C.quantize_nested(w, f, 2, 4, lookahead_weight=bad)


def test_lookahead_needs_the_optimal_method():
    w, f = _rows(3)
    with pytest.raises(ValueError, match="method='optimal'"):
        C.quantize_nested(w, f, 2, 4, C.ClusterMethod.LLOYD, lookahead_weight=1.0)


def test_config_refuses_lookahead_with_lloyd_and_keeps_plain_dumps():
    from pydantic import ValidationError

    from anyprec.config import QuantizationConfig

    with pytest.raises(ValidationError, match="lookahead_weight: null"):
        QuantizationConfig(method="lloyd", lookahead_weight=0.25)
    with pytest.raises(ValidationError):
        QuantizationConfig(lookahead_weight=-1.0)
    # the default: look-ahead for the optimal method, plain splits for lloyd (no error)
    assert QuantizationConfig().model_dump()["lookahead_weight"] == 0.25
    assert QuantizationConfig(method="lloyd").lookahead_weight is None
    # plain splits: cache keys and manifests stay byte-identical to earlier ones ...
    plain = QuantizationConfig(lookahead_weight=None)
    assert "lookahead_weight" not in plain.model_dump()
    # ... and a dump without the key (any artifact made before look-ahead was the default) reads as plain
    assert QuantizationConfig.from_dump(plain.model_dump()) == plain
    assert QuantizationConfig.from_dump(QuantizationConfig().model_dump()) == QuantizationConfig()


def test_pipeline_quantizes_with_lookahead(tiny_model_dir, tiny_artifact, tmp_path):
    from anyprec.packed import read_manifest
    from tests.conftest import quantize_tiny

    out = quantize_tiny(tiny_model_dir, tmp_path / "ahead", lookahead_weight=0.0)
    ahead, plain = read_manifest(out), read_manifest(quantize_tiny(tiny_model_dir, tmp_path / "plain", lookahead_weight=None))
    assert ahead["inputs"]["quantization"]["lookahead_weight"] == 0.0
    assert "lookahead_weight" not in plain["inputs"]["quantization"]
    assert read_manifest(tiny_artifact)["inputs"]["quantization"]["lookahead_weight"] == 0.25  # the default
    assert ahead["objective"]["3"] == pytest.approx(plain["objective"]["3"], rel=1e-12)  # the seed stays
    # weight 0: each seed cluster's split is the one best for 5 bits (plain's is one candidate) ...
    assert ahead["objective"]["5"] <= plain["objective"]["5"] * (1 + 1e-9)
    # ... and 4 bits pay for it (plain's split is the best for 4 bits)
    assert ahead["objective"]["4"] >= plain["objective"]["4"] * (1 - 1e-9)
