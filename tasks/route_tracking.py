"""The `:auto` routing evaluation (`anyprec bench route`) as one MLflow run.

Params: the evaluation settings and the router policy; metrics: per policy (`auto`, `8bit`,
`3bit`, ...) accuracy, tokens/s, CPU-seconds and wall seconds per request, mean bits; artifacts:
the markdown table and the full JSON (per-prompt rows). MLflow lives here, in the pipeline
package: the library (`anyprec/`) never imports it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

METRICS = ("accuracy", "tokens_per_s", "cpu_s_per_request", "wall_s_per_request", "mean_bits")


def route_params(settings: dict[str, Any]) -> dict[str, str]:
    """Flat MLflow params: the run's settings, the router's under `router.` (cue lists as JSON)."""
    flat = {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in settings.items() if k != "router"}
    for key, value in settings.get("router", {}).items():
        flat[f"router.{key}"] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return {k: v[:6000] for k, v in flat.items()}  # MLflow caps a param value's length


def route_metrics(result: dict[str, Any]) -> dict[str, float]:
    """`<policy>.<metric>` for every policy: `auto.accuracy`, `8bit.cpu_s_per_request`, ..."""
    out = {}
    for policy, summary in result["policies"].items():
        name = policy if policy == "auto" else f"{policy}bit"
        out.update({f"{name}.{m}": float(summary[m]) for m in METRICS})
        out.update({f"{name}.chose_{b}bit": float(c) for b, c in summary["bits_histogram"].items()})
    return out


def log_route_eval(result: dict[str, Any], table: str, tracking_uri: str, experiment: str,
                   run_name: str = "route-eval") -> str:
    """Log one evaluation (`evaluate(...)` plus its `settings`) as an MLflow run; returns the run id."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name) as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tags({"anyprec.kind": "route-eval", "anyprec.artifact": str(result["settings"].get("artifact"))})
        mlflow.log_params(route_params(result["settings"]))
        mlflow.log_metrics(route_metrics(result))
        for name, text in (("route.md", table + "\n"), ("route.json", json.dumps(result, indent=1))):
            path = Path(tmp) / name
            path.write_text(text, encoding="utf-8")
            mlflow.log_artifact(str(path))
        return run.info.run_id
