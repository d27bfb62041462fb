"""Results table assembly, deltas, MLflow metric rows, JSON/markdown writers and plots."""

from __future__ import annotations

import json
import math

import pytest

from anyprec.evaluation import table


def _metrics(ppl_wiki: float, acc_a: float, acc_b: float) -> dict[str, float]:
    return {"ppl_wiki": ppl_wiki, "acc_a": acc_a, "acc_b": acc_b, "acc_mean": (acc_a + acc_b) / 2}


@pytest.fixture
def report() -> dict:
    methods = {
        "rtn": {"3": _metrics(30.0, 0.30, 0.40), "4": _metrics(20.0, 0.40, 0.50)},
        "dedicated": {"3": _metrics(16.0, 0.40, 0.50), "4": _metrics(12.5, 0.45, 0.55)},
        "reference": {"3": _metrics(17.0, 0.35, 0.50), "4": _metrics(13.0, 0.45, 0.50)},
        "ours": {"3": _metrics(16.4, 0.40, 0.45), "4": _metrics(12.5, 0.50, 0.55)},
    }
    objective = {m: {b: {"total": total, "layers": {"l0": total / 4, "l1": 3 * total / 4}}
                     for b, total in zip(("3", "4"), totals)}
                 for m, totals in {"rtn": (8.0, 2.0), "dedicated": (2.0, 0.5),
                                   "reference": (4.0, 1.0), "ours": (2.0, 0.6)}.items()}
    return {"settings": {"bits": [3, 4]}, "base": _metrics(11.0, 0.5, 0.6), "methods": methods,
            "objective": objective, "seconds": {}}


def test_deltas_follow_the_definitions(report):
    d = table.deltas(report)
    assert set(d) == {"dedicated", "reference"}
    assert d["dedicated"]["3"]["ppl_wiki"] == pytest.approx(100 * (16.4 - 16.0) / 16.0)
    assert d["dedicated"]["4"]["ppl_wiki"] == pytest.approx(0.0)
    assert d["reference"]["3"]["acc_mean"] == pytest.approx(100 * (0.425 - 0.425))
    assert d["reference"]["4"]["acc_mean"] == pytest.approx(100 * (0.525 - 0.475))
    assert d["reference"]["3"]["objective"] == pytest.approx(0.5)
    assert d["dedicated"]["4"]["objective"] == pytest.approx(1.2)


def test_metric_order_and_cells(report):
    assert table.metric_names(report) == ["ppl_wiki", "acc_mean", "acc_a", "acc_b"]
    assert table.value(report, "base", 3, "ppl_wiki") == 11.0
    assert table.value(report, "ours", 4, "objective") == 0.6
    assert math.isnan(table.value(report, "ours", 5, "ppl_wiki"))


def test_markdown_rows_are_bits_and_columns_methods(report):
    md = table.metric_table(report, "ppl_wiki").splitlines()
    assert md[0] == "| bits | base | rtn | dedicated | reference | ours |"
    assert md[2] == "| 3 | 11.000 | 30.000 | 16.000 | 17.000 | 16.400 |"
    acc = table.metric_table(report, "acc_a").splitlines()
    assert acc[3] == "| 4 | 50.0 | 40.0 | 45.0 | 45.0 | 50.0 |"  # accuracy in percent
    full = table.markdown_report(report)
    assert "### objective" in full and "ppl_wiki (%) vs dedicated" in full
    assert "| 3 | +2.500 |" in full


def test_mlflow_rows_use_bits_as_step(report):
    rows = table.mlflow_metrics(report)
    lookup = {(k, s): v for k, v, s in rows}
    assert lookup[("ours/ppl_wiki", 3)] == 16.4
    assert lookup[("base/acc_mean", 4)] == pytest.approx(0.55)
    assert lookup[("delta_vs_dedicated/ppl_wiki", 3)] == pytest.approx(2.5)
    assert ("base/objective", 3) not in lookup  # NaN cells are dropped
    assert all(isinstance(s, int) for _, _, s in rows)


def test_writers_and_plot(report, tmp_path):
    path = table.write_json(report, tmp_path / "eval.json")
    data = json.loads(path.read_text())
    assert data["methods"]["ours"]["3"]["ppl_wiki"] == 16.4
    assert data["deltas"]["dedicated"]["3"]["ppl_wiki"] == pytest.approx(2.5)
    md = table.write_markdown(report, tmp_path / "eval.md").read_text()
    assert md == table.markdown_report(report)
    png = table.plot_metric(report, "ppl_wiki", tmp_path / "plots" / "ppl_wiki.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
