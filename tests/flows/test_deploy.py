"""Deployments: one per params.yaml model, the inbox one, and the scheduled + triggered watcher."""

from __future__ import annotations

from pathlib import Path

from anyprec.config import load_params
from anyprec.flows.deploy import REGISTERED_EVENT, build_deployments

REPO = Path(__file__).resolve().parents[2]


def test_every_params_model_has_a_deployment():
    deployments = {f"{d.flow_name}/{d.name}": d for d in build_deployments(REPO / "params.yaml")}
    params = load_params(REPO / "params.yaml")
    for model in params.models:
        assert deployments[f"quantize-eval/{model}"].parameters["model"] == model
    assert "quantize-eval/smollm2-135m" in deployments
    assert "quantize-eval/inbox" in deployments
    watch = deployments["watch-base-models/scheduled"]
    assert [s.schedule.cron for s in watch.schedules] == [params.pipeline.schedule_cron]
    assert [set(t.expect) for t in watch.triggers] == [{REGISTERED_EVENT}]
    assert Path(watch.parameters["params_file"]).is_absolute()
