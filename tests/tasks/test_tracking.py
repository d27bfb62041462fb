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


def frontier_fixture(artifact, folder) -> dict:
    """A frontier report of `artifact` in `folder`, written by anyprec.frontier's own writers."""
    from anyprec.fileio import sha256_file, write_json_atomic
    from anyprec.frontier import FORMAT, markdown_table, plot

    rows = [{"kind": "anyprec", "name": f"{b}-bit", "bytes": 1000 * b, "avg_bits": float(b),
             "ppl": {"wiki": 40.0 / b, "news": 50.0 / b}} for b in (3, 4)]
    rows += [{"kind": "llama.cpp", "name": "Q4_0", "bytes": 3500, "avg_bits": None, "ppl": {"wiki": 11.0, "news": 14.0}}]
    report = {"format": FORMAT, "artifact": str(artifact), "manifest_sha256": sha256_file(artifact / "manifest.json"),
              "corpora": ["wiki", "news"], "window": 32, "max_tokens": 96, "tokens": {"wiki": 96, "news": 96},
              "step": 0.25, "rows": rows, "notes": []}
    folder.mkdir(parents=True)
    write_json_atomic(folder / "frontier.json", report)
    (folder / "frontier.md").write_text(markdown_table(report))
    plot(report, folder / "frontier.png")
    return report


def test_the_frontier_of_this_artifact_joins_the_parent_run(tiny_artifact, tmp_path):
    import mlflow
    from types import SimpleNamespace

    from anyprec.dashboards.compare import load_frontier
    from anyprec.dashboards.render import render_dashboard
    from anyprec.tasks.tracking import FRONTIER_DIR, frontier_report, log_frontier

    layout = SimpleNamespace(reports_dir=tmp_path / "reports")
    packed = StageOutput(stage="packed", path=str(tiny_artifact), digest="d1")
    assert frontier_report(layout, "tiny", packed) is None  # none measured yet
    folder = tmp_path / "reports" / "tiny" / FRONTIER_DIR
    report = frontier_fixture(tiny_artifact, folder)
    assert frontier_report(layout, "tiny", packed) == report
    other = json.loads((folder / "frontier.json").read_text()) | {"manifest_sha256": "0" * 64}
    (folder / "frontier.json").write_text(json.dumps(other))  # a frontier of another artifact is not logged
    assert frontier_report(layout, "tiny", packed) is None
    (folder / "frontier.json").write_text(json.dumps(report))

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment("anyprec", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment("anyprec")
    with mlflow.start_run(tags={"kind": "pipeline", "model": "tiny"}) as parent:
        log_frontier(folder, report)
        with mlflow.start_run(nested=True, tags={"kind": "bits", "model": "tiny"}):
            mlflow.log_param("bits", 3)
            mlflow.log_metrics({"ppl_wiki": 13.0, "bytes_in_memory": 3000.0})
    client = mlflow.MlflowClient()
    files = sorted(f.path for f in client.list_artifacts(parent.info.run_id, FRONTIER_DIR))
    assert files == ["frontier/frontier.json", "frontier/frontier.md", "frontier/frontier.png"]
    history = client.get_metric_history(parent.info.run_id, "frontier_anyprec_ppl_news")
    assert sorted((m.step, m.value) for m in history) == [(3000, 50.0 / 3), (4000, 12.5)]
    assert [(m.step, m.value) for m in client.get_metric_history(parent.info.run_id, "frontier_llama_cpp_ppl_wiki")] \
        == [(3500, 11.0)]

    assert load_frontier(uri, "anyprec") == report
    assert load_frontier(uri, "anyprec", parent.info.run_id) == report
    from anyprec.dashboards.compare import load_runs

    page = render_dashboard(load_runs(uri, "anyprec"), tmp_path / "dash", frontier=report)
    assert (page.parent / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'alt="frontier"' in page.read_text()
