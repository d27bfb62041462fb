"""MLflow helpers of the pipeline: what is published, run identity, links and the params record."""

from __future__ import annotations

import json
from urllib.parse import unquote

from anyprec.tasks.bench import LOAD_LIMIT, load_report
from anyprec.tasks.caching import StageOutput
from anyprec.tasks.tracking import compare_link, publishable, run_key

QUIET = {"load1": 0.1, "cpus": 2, "load_per_cpu": 0.05}
BUSY = {"load1": 6.0, "cpus": 2, "load_per_cpu": 3.0}


def reports(machine: dict) -> dict:
    return {"ppl": {"bits": {"3": {"wiki": 30.0}}}, "bench": {"bits": {"3": {"decode_tok_s": 9.0}}, "machine": machine}}


def test_a_benchmark_under_load_is_withheld_unless_allowed():
    assert load_report(BUSY, QUIET)["under_load"] and not load_report(QUIET, BUSY)["under_load"]
    assert QUIET["load_per_cpu"] < LOAD_LIMIT < BUSY["load_per_cpu"]
    loaded = reports(load_report(BUSY, BUSY))
    assert set(publishable(loaded, publish_under_load=False)) == {"ppl"}
    assert publishable(loaded, publish_under_load=True) is loaded
    quiet = reports(load_report(QUIET, QUIET))
    assert publishable(quiet, publish_under_load=False) is quiet


def test_run_key_changes_with_artifact_reports_or_params_file():
    packed = StageOutput(stage="packed", path="/a", digest="d1")
    params = {"params_file_sha256": "p1"}
    key = run_key(packed, reports(QUIET), params)
    assert key == run_key(packed.model_copy(update={"path": "/elsewhere"}), reports(QUIET), params)
    assert key != run_key(packed.model_copy(update={"digest": "d2"}), reports(QUIET), params)
    assert key != run_key(packed, reports(BUSY), params)
    assert key != run_key(packed, reports(QUIET), {"params_file_sha256": "p2"})


def test_compare_link_lists_the_runs():
    url = compare_link("sqlite:///x.db", "7", ["r1", "r2"])
    assert url.startswith("http://127.0.0.1:5000/#/compare-runs?runs=")
    assert json.loads(unquote(url.split("runs=")[1].split("&")[0])) == ["r1", "r2"]
    assert compare_link("http://mlflow.example:5000/", "7", ["r"]).startswith("http://mlflow.example:5000/#/")


def test_a_fractional_precision_gets_its_own_child_run_with_its_plan_bytes(tiny_artifact):
    from anyprec.packed import artifact_sizes
    from anyprec.precision import resolve_precision
    from anyprec.tasks.tracking import _bits_measured, child_metrics

    measured = {"ppl": {"bits": {"4": {"wiki": 30.0}, "4.5": {"wiki": 28.0}, "10": {"wiki": 20.0}}},
                "bench": {"bits": {"3": {"decode_tok_s": 9.0}}}}
    assert _bits_measured(measured, {}) == [3, 4, 4.5, 10]  # numeric order, not text order
    sizes = artifact_sizes(tiny_artifact)
    plan = child_metrics(measured, sizes, 4.5, str(tiny_artifact))
    expected = resolve_precision(tiny_artifact, 4.5).quantized_bytes + sizes["per_bits"][3]["dense"]
    assert plan == {"ppl_wiki": 28.0, "bytes_in_memory": float(expected)}
    assert sizes["per_bits"][4]["total"] < expected < sizes["per_bits"][5]["total"]
    assert child_metrics(measured, sizes, 4)["bytes_in_memory"] == sizes["per_bits"][4]["total"]
