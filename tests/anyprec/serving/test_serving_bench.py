"""`bench serve` (load test) against the test server, and `bench route` (:auto evaluation) on a prompt file."""

from __future__ import annotations

import json

import pytest

from anyprec.cli import main
from anyprec.serving.loadtest import loopback_url, run_load


@pytest.mark.parametrize("chat", [False, True])
def test_load_test_reports_zero_errors_latency_and_memory(server, chat):
    summary = run_load(server[0], ["tiny:auto", "tiny:3bit", "tiny:8bit"], clients=3, seconds=3, max_tokens=4,
                       chat=chat)
    assert summary["errors"] == 0 and summary["requests"] >= 3
    assert summary["completion_tokens"] == 4 * summary["requests"] and summary["tokens_per_s"] > 0
    assert summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"]
    assert summary["ttft_ms"]["p50"] <= summary["latency_ms"]["p99"]
    assert 0 < summary["tpot_ms"]["p50"] <= summary["latency_ms"]["p99"]
    assert summary["server_cpu_s"] > 0 and summary["server_cpu_ms_per_token"] > 0
    assert {"3", "8"} <= set(summary["requests_per_bits"])
    assert summary["memory"]["peak_rss_mib"] > 0 and summary["memory"]["flat"] in (True, False)


def test_load_test_refuses_other_hosts_and_unbounded_runs(tiny_artifact, capsys):
    with pytest.raises(ValueError, match="127.0.0.1"):
        loopback_url("http://10.1.2.3:8000")
    assert main(["bench", "serve", str(tiny_artifact), "--clients", "0"]) == 2
    assert "--clients 0" in capsys.readouterr().err


def test_route_evaluation_compares_auto_with_fixed_precisions(tiny_artifact, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 wants an opt-in for a file store
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"task": "t", "query": "The quick brown fox", "choices": [" jumps", " sleeps"], "gold": 0},
            {"task": "t", "query": "Explain why 3 + 4 = 7, step by step, in python code", "choices": [" a", " b"],
             "gold": 1}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out, md, store = tmp_path / "route.json", tmp_path / "route.md", (tmp_path / "mlruns").as_uri()
    assert main(["bench", "route", str(tiny_artifact), "--prompts", str(prompts), "--max-tokens", "3",
                 "--json", str(out), "--markdown", str(md), "--mlflow", store, "--mlflow-experiment", "route"]) == 0
    result = json.loads(out.read_text())
    assert set(result["policies"]) == {"auto", "8", "3"}
    for s in result["policies"].values():
        assert s["requests"] == 2 and 0.0 <= s["accuracy"] <= 1.0 and s["cpu_s_per_request"] > 0
    auto_bits = [row["policies"]["auto"]["bits"] for row in result["prompts"]]
    assert auto_bits[0] < auto_bits[1]  # the plain prompt gets fewer bits than the one full of cues
    assert result["policies"]["8"]["mean_bits"] == 8.0 and "| :auto |" in md.read_text()
    _check_mlflow_run(store, result, md.read_text())


def _check_mlflow_run(store: str, result: dict, table: str) -> None:
    """The run holds the settings, every policy's figures and the table, as the JSON says."""
    from mlflow import MlflowClient

    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("route").experiment_id])
    assert run.data.params["max_tokens"] == "3" and run.data.params["router.min_bits"] == "3"
    for policy, name in (("auto", "auto"), ("8", "8bit"), ("3", "3bit")):
        for metric in ("accuracy", "tokens_per_s", "cpu_s_per_request", "mean_bits"):
            assert run.data.metrics[f"{name}.{metric}"] == pytest.approx(result["policies"][policy][metric])
    assert run.data.metrics["8bit.chose_8bit"] == 2.0
    listed = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert listed == {"route.md", "route.json"}
    local = client.download_artifacts(run.info.run_id, "route.md")
    assert open(local, encoding="utf-8").read() == table
