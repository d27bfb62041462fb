"""End to end: the quantize-eval flow on a tiny model under Prefect's test harness.

First run computes every stage and logs MLflow runs; the second identical run is a cache
hit for every stage; changing only evaluation settings re-runs only evaluation.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import yaml

from anyprec import stages
from anyprec.tasks.layout import Layout, ModelMissingError
from anyprec.tasks.pipeline import REPORT_NAMES

STAGES = [spec.name for spec in stages.STAGES]
EVALS = list(REPORT_NAMES)


def task_states(flow_run_id) -> dict[str, str]:
    """{task name: state name} of a flow run's task runs (e.g. 'Completed', 'Cached')."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    # task run names are "<task name>-<suffix>"
    return {run.name.rsplit("-", 1)[0]: run.state.name for run in runs}


def run_flow(root, model="tiny"):
    from anyprec.flows.quantize_eval import quantize_eval

    state = quantize_eval(model=model, params_file=str(root / "params.yaml"), return_state=True)
    return state.result(), task_states(state.state_details.flow_run_id)


@pytest.fixture(scope="module")
def first_run(prefect_harness, pipeline_root):
    start = time.perf_counter()
    summary, states = run_flow(pipeline_root)
    return summary, states, time.perf_counter() - start


def test_first_run_computes_and_tracks(first_run, pipeline_root):
    import mlflow

    summary, states, _ = first_run
    assert all(states[name] == "Completed" for name in STAGES + EVALS), states
    layout = Layout.from_file(pipeline_root / "params.yaml")
    assert (layout.stage_path("tiny", "packed") / "manifest.json").is_file()
    mlflow.set_tracking_uri(layout.tracking_uri)
    children = mlflow.search_runs(experiment_names=["anyprec"],
                                  filter_string=f"tags.mlflow.parentRunId = '{summary.mlflow_parent_run_id}'")
    assert sorted(children["params.bits"].astype(int)) == [3, 4]
    for column in ["metrics.ppl_news", "metrics.bytes_in_memory", "metrics.gemv_latency_us", "metrics.gemv_ratio_floor",
                   "metrics.decode_tok_s"]:
        assert children[column].notna().all() and (children[column] > 0).all(), column
    assert (children["tags.dvc_md5"] == summary.dvc_md5).all()
    by_bits = children.set_index(children["params.bits"].astype(int))
    assert by_bits.loc[3, "metrics.bytes_in_memory"] < by_bits.loc[4, "metrics.bytes_in_memory"]
    assert summary.registered_version == "1"
    served = mlflow.pyfunc.load_model("models:/anyprec-tiny/1")
    texts = served.predict([{"prompt": "The quick", "bits": 3, "max_new_tokens": 2}])
    assert len(texts) == 1 and isinstance(texts[0], str)
    assert summary.dashboard and "data-plots-expected" in open(summary.dashboard).read()


def test_mlflow_opens_on_runs_and_names_source_params_and_alias(first_run, pipeline_root):
    import mlflow
    from mlflow import MlflowClient

    summary, _, _ = first_run
    layout = Layout.from_file(pipeline_root / "params.yaml")
    mlflow.set_tracking_uri(layout.tracking_uri)
    client = MlflowClient()
    experiment = client.get_experiment_by_name("anyprec")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    parent = client.get_run(summary.mlflow_parent_run_id)
    assert parent.info.run_name.startswith("tiny 3..4-bit")
    assert parent.data.tags["mlflow.source.name"] == "anyprec.flows.quantize_eval"
    assert parent.data.tags["params_file"] == str(pipeline_root / "params.yaml")
    assert parent.data.params["params_copy"] == "false" and len(parent.data.params["params_file_sha256"]) == 64
    children = mlflow.search_runs(experiment_names=["anyprec"], output_format="list",
                                  filter_string=f"tags.mlflow.parentRunId = '{summary.mlflow_parent_run_id}'")
    assert sorted(run.info.run_name for run in children) == ["tiny 3-bit", "tiny 4-bit"]
    assert str(client.get_model_version_by_alias("anyprec-tiny", "latest-nested").version) == summary.registered_version


def test_flow_run_has_a_markdown_summary(first_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    summary, _, _ = first_run
    with get_client(sync_client=True) as client:
        by_key = ArtifactFilter(key=ArtifactFilterKey(any_=["quantize-eval-tiny"]))
        found = client.read_artifacts(artifact_filter=by_key)
    assert found and found[0].type == "markdown"
    assert "| bits |" in found[0].data and summary.mlflow_parent_run_id in found[0].data


def test_second_run_hits_cache_for_every_stage(first_run, pipeline_root):
    summary1, _, first_seconds = first_run
    start = time.perf_counter()
    summary2, states = run_flow(pipeline_root)
    seconds = time.perf_counter() - start
    assert all(states[name] == "Cached" for name in STAGES + EVALS), states
    assert summary2.reports == summary1.reports
    assert summary2.artifact_digest == summary1.artifact_digest
    assert summary2.registered_version == summary1.registered_version  # same bytes: no new version
    assert summary2.mlflow_parent_run_id == summary1.mlflow_parent_run_id  # nothing new: the run is reused
    assert seconds < first_seconds


def test_runs_write_only_git_ignored_paths(first_run, pipeline_root):
    # As in a clone: the repository's .gitignore, the inputs committed, then two flow runs.
    import shutil
    import subprocess

    run_flow(pipeline_root)
    shutil.copy(Path(__file__).resolve().parents[2] / ".gitignore", pipeline_root / ".gitignore")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(pipeline_root)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", ".gitignore", "params.yaml", "models"], check=True)
    status = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True, check=True).stdout
    assert all(line.startswith("A ") for line in status.splitlines()), status


def test_changing_evaluation_reruns_only_evaluation(first_run, pipeline_root):
    params_file = pipeline_root / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["evaluation"]["ppl_max_tokens"] = 96
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    summary, states = run_flow(pipeline_root)
    assert all(states[name] == "Cached" for name in STAGES + ["eval", "bench"]), states
    assert states["ppl"] == "Completed"
    assert summary.reports["ppl"]["tokens"] == {"news": 96}


def test_missing_model_fails_fast_naming_the_key(prefect_harness, pipeline_root):
    from anyprec.flows.quantize_eval import quantize_eval

    start = time.perf_counter()
    with pytest.raises(ModelMissingError, match=r"models\.llama2-7b\.path"):
        quantize_eval(model="llama2-7b", params_file=str(pipeline_root / "params.yaml"))
    assert time.perf_counter() - start < 30


def test_failed_run_state_carries_the_one_line_cause(prefect_harness, pipeline_root):
    from anyprec.flows.quantize_eval import quantize_eval

    params_file = str(pipeline_root / "params.yaml")
    state = quantize_eval(model="llama2-7b", params_file=params_file, return_state=True)
    assert state.is_failed()
    assert "models.llama2-7b.path" in state.message and params_file in state.message
    assert "Traceback" not in state.message


def test_artifact_names_a_loadable_base_model_and_the_cli_runs_on_it(first_run, tmp_path):
    # The tiny model is registered under the key "tiny": the manifest must still name a folder
    # that `anyprec bench decode` / `anyprec eval` can load, plus the key it came from.
    from anyprec.cli import main
    from anyprec.packed import read_manifest

    summary, _, _ = first_run
    inputs = read_manifest(summary.artifact)["inputs"]
    assert inputs["base_model_name"] == "tiny"
    assert (Path(inputs["base_model_ref"]) / "config.json").is_file()
    out = tmp_path / "decode.json"
    assert main(["bench", "decode", summary.artifact, "--bits", "3", "--tokens", "2", "--repeats", "1",
                 "--json", str(out)]) == 0
    assert out.is_file()
    report_file = tmp_path / "eval.json"
    assert main(["eval", summary.artifact, "--bits", "3", "--methods", "ours", "--tasks", "--corpus", "news",
                 "--window", "32", "--ppl-max-tokens", "64", "--work-dir", str(tmp_path / "work"),
                 "--json", str(report_file), "--no-progress"]) == 0
    report = json.loads(report_file.read_text())
    assert report["base_model_ref"] == inputs["base_model_ref"]
    assert math.isfinite(report["methods"]["ours"]["3"]["ppl_news"])


def test_interrupted_layer_stage_resumes_from_its_files(first_run, pipeline_root):
    layout = Layout.from_file(pipeline_root / "params.yaml")
    layers = sorted(layout.stage_path("tiny", "seed").glob("layer_*.safetensors"))
    assert len(layers) == 2
    kept_mtime = layers[0].stat().st_mtime_ns
    layers[1].unlink()  # as if the run had been killed before the last layer was written
    _, states = run_flow(pipeline_root)
    assert states["seed"] == "Completed"
    assert layers[0].stat().st_mtime_ns == kept_mtime  # finished layer neither deleted nor redone
    assert layers[1].is_file()
    assert states["packed"] == "Cached"  # same seed content -> same downstream keys


def test_bits_parameter_evaluates_a_fractional_precision(first_run, pipeline_root):
    import mlflow

    from anyprec.flows.quantize_eval import quantize_eval
    from anyprec.packed import artifact_sizes

    state = quantize_eval(model="tiny", params_file=str(pipeline_root / "params.yaml"), bits=[3, 3.5],
                          return_state=True)
    summary, states = state.result(), task_states(state.state_details.flow_run_id)
    assert all(states[name] == "Cached" for name in STAGES), states  # only evaluation is new
    assert set(summary.reports["ppl"]["bits"]) == {"3", "3.5"}
    layout = Layout.from_file(pipeline_root / "params.yaml")
    mlflow.set_tracking_uri(layout.tracking_uri)
    children = mlflow.search_runs(experiment_names=["anyprec"], output_format="list",
                                  filter_string=f"tags.mlflow.parentRunId = '{summary.mlflow_parent_run_id}'")
    by_name = {run.info.run_name: run for run in children}
    assert sorted(by_name) == ["tiny 3-bit", "tiny 3.5-bit", "tiny 4-bit"]  # 4: benchmark.bits
    plan = by_name["tiny 3.5-bit"]
    assert plan.data.params["bits"] == "3.5" and plan.data.metrics["ppl_news"] > 0
    per_bits = artifact_sizes(summary.artifact)["per_bits"]
    assert per_bits[3]["total"] < plan.data.metrics["bytes_in_memory"] < per_bits[4]["total"]
