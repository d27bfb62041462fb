"""The server as a Ray Serve deployment on a real local Ray: one replica over the tiny artifact,
queried through Ray's HTTP proxy on 127.0.0.1 with the real `openai` client."""

from __future__ import annotations

import os
import socket

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytest.importorskip("ray.serve")

MODEL = "tiny"
N_TOKENS = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_url(chat_artifact):
    """Ray's HTTP proxy (base url) in front of one anyprec replica; Ray stops afterwards."""
    import ray
    from ray import serve

    from anyprec.config import ServingConfig
    from anyprec.serving.ray_serve import deployment

    # Offline and light: no usage report, no dashboard, two CPUs for the whole local cluster;
    # address="local" starts a fresh one even where `ray start` left a cluster running.
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = deployment(chat_artifact, replicas=1, engine="transformers", name=MODEL, cpus_per_replica=1,
                         serving=ServingConfig(max_batch=2, max_tokens_limit=32))
        serve.run(app, name="anyprec", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.mark.timeout(300)
def test_ray_replica_serves_the_openai_api_and_metrics(ray_url):
    from openai import OpenAI

    client = OpenAI(base_url=ray_url + "/v1", api_key="unused", max_retries=0, timeout=60)
    ids = [m.id for m in client.models.list().data]
    assert f"{MODEL}:3bit" in ids and f"{MODEL}:8bit" in ids and f"{MODEL}:auto" in ids

    resp = client.completions.create(model=f"{MODEL}:4bit", prompt="The quick brown fox",
                                     max_tokens=N_TOKENS, temperature=0)
    assert resp.model == f"{MODEL}:4bit"
    assert 1 <= resp.usage.completion_tokens <= N_TOKENS and resp.choices[0].text

    metrics = httpx.get(ray_url + "/metrics", timeout=30)
    assert metrics.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(metrics.text)}
    # The replica that decoded the completion answered the scrape (there is only one).
    finished = {s.labels["status"]: s.value for s in families["anyprec_requests"].samples
                if s.name == "anyprec_requests_total" and s.labels["bits"] == "4"}
    assert finished == {resp.choices[0].finish_reason: 1.0}
