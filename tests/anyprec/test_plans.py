"""Precision plans: exact knapsack, byte accounting, fractional precision in the runtime and CLI."""

from __future__ import annotations

import itertools
import json
import math
import shutil

import numpy as np
import pytest
import torch

from anyprec.cli import main
from anyprec.packed import artifact_sizes, read_manifest, verify_files
from anyprec.plans import (
    OBJECTIVE_FILE,
    make_plan,
    module_bytes,
    module_params,
    plan_for,
    plan_for_ppl,
    ppl_slope,
    read_objectives,
    solve_choice,
)
from anyprec.runtime import AnyPrecisionLinear, load_anyprec


def _brute_force(costs: np.ndarray, values: np.ndarray, capacity: int) -> float:
    best = np.inf
    for picks in itertools.product(range(costs.shape[1]), repeat=len(costs)):
        rows = np.arange(len(costs))
        if costs[rows, picks].sum() <= capacity:
            best = min(best, values[rows, picks].sum())
    return best


@pytest.mark.parametrize("seed", range(12))
def test_knapsack_is_optimal_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    m, j = int(rng.integers(2, 6)), int(rng.integers(2, 4))
    # Costs share a factor (as byte counts do) and values are not convex in the cost.
    costs = rng.integers(0, 9, size=(m, j)) * int(rng.integers(1, 5))
    values = rng.random((m, j))
    capacity = int(rng.integers(costs.min(axis=1).sum(), costs.max(axis=1).sum() + 1))
    picks = solve_choice(costs, values, capacity)
    rows = np.arange(m)
    assert costs[rows, picks].sum() <= capacity
    assert values[rows, picks].sum() == pytest.approx(_brute_force(costs, values, capacity), abs=1e-12)


def test_coarse_grid_still_fits_the_budget():
    rng = np.random.default_rng(0)
    costs = rng.integers(1, 1000, size=(6, 4))
    values = rng.random((6, 4))
    capacity = int(costs.mean(axis=1).sum())
    picks = solve_choice(costs, values, capacity, max_cells=16)
    assert costs[np.arange(6), picks].sum() <= capacity


def test_infeasible_budgets_are_refused():
    costs, values = np.array([[3, 4], [3, 4]]), np.array([[1.0, 0.5], [1.0, 0.5]])
    with pytest.raises(ValueError, match="budget infeasible: the cheapest plan needs 6"):
        solve_choice(costs, values, 5)
    objectives = {"a": {3: 1.0, 4: 0.5}}
    nbytes = {"a": {3: 30, 4: 40}}
    with pytest.raises(ValueError, match="outside the widths 3..4"):
        make_plan(objectives, nbytes, avg_bits=2.5, params={"a": 10})
    with pytest.raises(ValueError, match="budget infeasible"):
        make_plan(objectives, nbytes, max_bytes=29)
    with pytest.raises(ValueError, match="exactly one budget"):
        make_plan(objectives, nbytes)


def test_identical_modules_at_an_integer_average_are_uniform():
    objectives = {f"m{i}": {b: 2.0 ** -b for b in range(3, 9)} for i in range(5)}  # convex in b
    nbytes = {n: {b: 100 * b for b in range(3, 9)} for n in objectives}
    params = {n: 800 for n in objectives}
    for avg in (3, 4, 6, 8):
        assert set(make_plan(objectives, nbytes, avg_bits=avg, params=params).values()) == {avg}


def test_plan_spends_bits_where_the_objective_falls_most():
    objectives = {"flat": {3: 1.0, 4: 0.99, 5: 0.98}, "steep": {3: 10.0, 4: 1.0, 5: 0.1}}
    nbytes = {n: {b: b for b in (3, 4, 5)} for n in objectives}
    plan = make_plan(objectives, nbytes, avg_bits=4.0, params={"flat": 1, "steep": 1})
    assert plan == {"flat": 3, "steep": 5}


def test_byte_accounting_matches_artifact_sizes(tiny_artifact):
    manifest = read_manifest(tiny_artifact)
    sizes = artifact_sizes(tiny_artifact)
    nbytes = module_bytes(manifest)
    for b, row in sizes["per_bits"].items():
        assert sum(r[b] for r in nbytes.values()) == row["codes"] + row["luts"]
    assert sum(module_params(manifest).values()) == sizes["quantized_params"]


def test_artifact_carries_per_module_objectives(tiny_quantized):
    artifact, work = tiny_quantized
    manifest = read_manifest(artifact)
    verify_files(artifact, manifest)
    table = read_objectives(artifact, manifest)
    assert set(table) == set(manifest["modules"])
    for b, total in manifest["objective"].items():
        assert sum(row[int(b)] for row in table.values()) == pytest.approx(total, rel=1e-9)
    # An artifact without the table (quantized before it existed) plans from the work directory.
    del manifest["files"][OBJECTIVE_FILE]
    with pytest.raises(ValueError, match="no per-module objective table"):
        read_objectives(artifact, manifest)
    again = read_objectives(artifact, manifest, work)
    assert set(again) == set(table)
    for name, row in table.items():
        assert again[name] == pytest.approx(row, rel=1e-9)


@pytest.fixture(scope="module")
def apm(tiny_artifact):
    return load_anyprec(tiny_artifact)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 300, (1, 20), generator=torch.Generator().manual_seed(1))


def _manual_logits(apm, plan: dict[str, int], ids) -> torch.Tensor:
    """Logits with each module forced to its width by hand, bypassing plans."""
    layers = {m.name: m for m in apm.model.modules() if isinstance(m, AnyPrecisionLinear)}
    originals = {}
    for name, layer in layers.items():
        originals[name] = layer.forward

        def forward(x, layer=layer, b=plan[name]):
            with apm.precision(b):
                return AnyPrecisionLinear.forward(layer, x)

        layer.forward = forward
    try:
        with torch.inference_mode():
            return apm(ids).logits
    finally:
        for name, layer in layers.items():
            layer.forward = originals[name]


def test_plan_runs_each_module_at_its_width(apm, ids):
    names = list(apm.manifest["modules"])
    rng = np.random.default_rng(0)
    plan = {n: int(rng.integers(3, 9)) for n in names}
    with torch.inference_mode():
        got = apm(ids, precision=plan).logits
        assert not torch.equal(got, apm(ids, precision=8).logits)
    assert torch.equal(got, _manual_logits(apm, plan, ids))
    uniform = {n: 5 for n in names}
    with torch.inference_mode():
        assert torch.equal(apm(ids, precision=uniform).logits, apm(ids, precision=5).logits)


def test_fractional_precision_in_set_precision_generate_and_context(apm, ids):
    plan = apm._state.check(4.5)
    assert plan.avg_bits <= 4.5 and set(plan.bits.values()) - {4, 5}  # a real mix of widths
    assert apm._state.check(4.5) is plan  # computed once, then cached
    expected = _manual_logits(apm, plan.bits, ids)
    with apm.precision(4.5), torch.inference_mode():
        assert apm.current_precision == 4.5 and apm.current_plan is plan
        assert torch.equal(apm(ids).logits, expected)
    assert apm.current_precision == 8 and apm.current_plan is None
    apm.set_precision(4.5)
    try:
        with torch.inference_mode():
            assert torch.equal(apm(ids).logits, expected)
        out = apm.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=2)
        manual = apm.generate(ids, precision=plan.bits, max_new_tokens=4, do_sample=False, pad_token_id=2)
        assert torch.equal(out, manual)
    finally:
        apm.set_precision(8)
    assert apm.current_precision == 8
    assert apm._state.check(4.0) == 4  # an integer-valued float is the integer width


def test_plan_at_an_integer_average_is_no_worse_than_uniform(tiny_artifact):
    manifest = read_manifest(tiny_artifact)
    table = read_objectives(tiny_artifact, manifest)
    for b in (3, 4, 5, 8):
        plan = plan_for(manifest, table, list(range(3, 9)), avg_bits=float(b))
        assert plan.avg_bits <= b
        assert plan.objective <= sum(row[b] for row in table.values()) * (1 + 1e-12)
    assert set(plan_for(manifest, table, [3, 4, 5, 6, 7, 8], avg_bits=3.0).bits.values()) == {3}


def test_bad_plans_are_refused_clearly(apm):
    names = list(apm.manifest["modules"])
    with pytest.raises(ValueError, match=r"unknown modules \['nope'\]"):
        apm.set_precision({**{n: 4 for n in names}, "nope": 4})
    with pytest.raises(ValueError, match="missing modules"):
        apm.set_precision({n: 4 for n in names[1:]})
    with pytest.raises(ValueError, match="9 bits; this model has bit-widths"):
        apm.set_precision({**{n: 4 for n in names}, names[0]: 9})
    with pytest.raises(ValueError, match="outside the loaded bit-widths 3..8"):
        apm.set_precision(2.5)
    with pytest.raises(ValueError, match="neither a bit-width nor a stored plan nor a file"):
        apm.set_precision("four")
    small = load_anyprec(apm_dir_of(apm), bits=[4, 5])
    with pytest.raises(ValueError, match="outside the loaded bit-widths 4..5"):
        small.set_precision(3.5)
    assert set(small._state.check(4.5).bits.values()) <= {4, 5}


def apm_dir_of(apm):
    return apm._state.resolve.artifact_dir


def test_cli_plan_stores_a_hashed_plan_and_ppl_uses_it(tiny_artifact, tmp_path, capsys):
    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art)
    assert main(["plan", str(art), "--avg-bits", "4.25"]) == 0
    manifest = read_manifest(art)
    verify_files(art, manifest)
    (name, target), = manifest["plans"].items()
    assert target == {"avg_bits": 4.25} and name in manifest["files"]
    stored = json.loads((art / name).read_text())
    assert stored["avg_bits"] <= 4.25 and set(stored["modules"]) == set(manifest["modules"])
    apm = load_anyprec(art)
    assert apm._state.check(4.25).bits == stored["modules"]
    # A stored plan wins over a computed one, even when it is not the optimum.
    stored["modules"] = {n: 4 for n in stored["modules"]}
    (art / name).write_text(json.dumps(stored))
    with pytest.raises(ValueError, match="does not match its sha256"):
        load_anyprec(art, verify=False)._state.check(4.25)
    out = tmp_path / "budget.json"
    budget = artifact_sizes(art)["per_bits"][5]["total"]
    assert main(["plan", str(art), "--max-bytes", str(budget), "--out", str(out)]) == 0
    plan = json.loads(out.read_text())
    assert plan["quantized_bytes"] + artifact_sizes(art)["per_bits"][5]["dense"] <= budget
    capsys.readouterr()
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog while the cat sleeps. " * 8)
    assert main(["ppl", str(tiny_artifact), "--bits", "4", "4.5", str(out), "--no-base", "--max-tokens", "64",
                 "--text", str(text), "--json", str(tmp_path / "ppl.json")]) == 0
    measured = json.loads((tmp_path / "ppl.json").read_text())["bits"]
    assert set(measured) == {"4", "4.5", str(out)}
    printed = capsys.readouterr().out.splitlines()  # a plan file is named as given, widths as N-bit
    assert any(line.split()[0] == "4.5-bit" for line in printed)
    assert any(line.split()[0] == str(out) for line in printed)
    apm = load_anyprec(tiny_artifact)
    apm.set_precision(str(out))
    assert apm.current_plan.bits == plan["modules"]
    (tmp_path / "bad.json").write_text('{"modules": {}}')
    with pytest.raises(ValueError, match="is not an anyprec plan"):
        apm.set_precision(str(tmp_path / "bad.json"))
    assert main(["plan", str(art), "--max-bytes", "10"]) == 2
    assert "does not even hold the dense tensors" in capsys.readouterr().err


def test_max_ppl_increase_picks_the_fewest_bits_within_the_prediction(tiny_artifact, tmp_path, capsys):
    manifest = read_manifest(tiny_artifact)
    table = read_objectives(tiny_artifact, manifest)
    widths = list(range(3, 9))
    totals = {b: sum(row[b] for row in table.values()) for b in widths}
    slope = 0.05 / totals[4]  # a report where 4 bits costs exp(0.05) - 1 = 5.1%
    report = {"base": {"wiki": 20.0, "news": 25.0},
              "bits": {str(b): {c: v * math.exp(slope * totals[b]) for c, v in (("wiki", 20.0), ("news", 25.0))}
                       for b in widths}}
    assert ppl_slope(report, totals) == pytest.approx(slope, rel=1e-9)
    plan = plan_for_ppl(manifest, table, widths, 3.0, slope)
    assert math.expm1(slope * plan.objective) <= 0.03
    fewer = plan_for(manifest, table, widths, avg_bits=plan.avg_bits - 0.01)
    assert math.expm1(slope * fewer.objective) > 0.03
    assert 3.0 < plan.avg_bits < 8.0
    path = tmp_path / "ppl.json"
    path.write_text(json.dumps(report))
    assert main(["plan", str(tiny_artifact), "--max-ppl-increase", "3", "--calibration", str(path),
                 "--out", str(tmp_path / "p.json")]) == 0
    assert json.loads((tmp_path / "p.json").read_text())["modules"] == plan.bits
    capsys.readouterr()
    assert main(["plan", str(tiny_artifact), "--max-ppl-increase", "3", "--out", str(tmp_path / "q.json")]) == 2
    assert "needs --calibration" in capsys.readouterr().err
    with pytest.raises(ValueError, match="below the predicted"):
        plan_for_ppl(manifest, table, widths, 1e-9, slope)
