"""Serve every deployment from one process: `python -m anyprec.flows.deploy [--params params.yaml]`.

Deployments (names are "<flow>/<deployment>"):
- quantize-eval/<model> for every model in params.yaml (parameters: model, params_file);
- quantize-eval/inbox for folders dropped into pipeline.inbox_dir (watch-base-models fills
  in model and model_path);
- watch-base-models/scheduled on the cron pipeline.schedule_cron and on every
  `model.base.registered` event (see docs/OPERATIONS.md for emitting one).
Needs a Prefect server (PREFECT_API_URL, e.g. http://127.0.0.1:4200/api). The flows run in
this process, with the task runner params.yaml names.
"""

from __future__ import annotations

import argparse
from pathlib import Path


REGISTERED_EVENT = "model.base.registered"
WATCH_DEPLOYMENT = "scheduled"


def build_deployments(params_file: str | Path = "params.yaml") -> list:
    """RunnerDeployments for every model, the inbox and the watcher (nothing is started)."""
    from prefect.events import DeploymentEventTrigger

    from anyprec.flows.quantize_eval import quantize_eval
    from anyprec.flows.runners import make_task_runner
    from anyprec.flows.watch import INBOX_DEPLOYMENT, watch_base_models
    from anyprec.tasks.layout import Layout

    params_path = str(Path(params_file).resolve())
    layout = Layout.from_file(params_path)
    flow = quantize_eval.with_options(task_runner=make_task_runner(layout.params.pipeline))
    deployments = [
        flow.to_deployment(
            name=name,
            parameters={"model": name, "params_file": params_path},
            description=f"quantize + evaluate params.yaml model {name!r} ({entry.description or entry.path})",
            tags=["anyprec", name],
        )
        for name, entry in layout.params.models.items()
    ]
    deployments.append(
        flow.to_deployment(
            name=INBOX_DEPLOYMENT,
            parameters={"params_file": params_path},
            description="quantize + evaluate a folder from the inbox (model, model_path given by the watcher)",
            tags=["anyprec", "inbox"],
        )
    )
    deployments.append(
        watch_base_models.to_deployment(
            name=WATCH_DEPLOYMENT,
            parameters={"params_file": params_path},
            cron=layout.params.pipeline.schedule_cron,
            triggers=[DeploymentEventTrigger(expect={REGISTERED_EVENT}, parameters={"params_file": params_path})],
            description="find new/changed base models (params.yaml, inbox) and start quantize-eval for them",
            tags=["anyprec", "watch"],
        )
    )
    return deployments


def main(argv: list[str] | None = None) -> None:
    """Serve all deployments until interrupted (Ctrl-C / SIGINT)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params.yaml to read (default: ./params.yaml)")
    args = parser.parse_args(argv)
    from prefect import serve

    serve(*build_deployments(args.params))


if __name__ == "__main__":
    main()
