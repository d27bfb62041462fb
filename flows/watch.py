"""The `watch-base-models` flow: find base models not yet quantized at their current content.

Candidates are every params.yaml model whose folder is present (the embedded default
included) and every model folder (with config.json) dropped into `pipeline.inbox_dir`.
A candidate is due when its packed artifact is missing or was built from another base
model sha256 (manifest `inputs.base_model_sha256`), and no run for that same sha256 is
still under way. Due models get a `quantize-eval` run: through the deployments
(`quantize-eval/<model>`, `quantize-eval/inbox` for inbox folders) when served, or as
subflows in this process (`dispatch="subflow"`, also what the tests use).
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

from prefect import flow, get_run_logger, task
from pydantic import BaseModel

from anyprec import stages
from anyprec.fileio import write_json_atomic
from anyprec.tasks.layout import Layout, ModelMissingError, require_model

FLOW_NAME = "watch-base-models"
INBOX_DEPLOYMENT = "inbox"


class Dispatch(str, Enum):
    DEPLOYMENT = "deployment"
    SUBFLOW = "subflow"


class Candidate(BaseModel):
    """A base model the watcher looked at."""

    name: str
    location: str
    from_inbox: bool
    sha256: str = ""
    due: bool = False
    reason: str = ""


def inbox_models(layout: Layout) -> dict[str, str]:
    """{folder name: path} of model folders in the inbox not already named in params.yaml."""
    inbox = layout.inbox_dir
    if not inbox.is_dir():
        return {}
    return {
        child.name: str(child)
        for child in sorted(inbox.iterdir())
        if (child / "config.json").is_file() and child.name not in layout.params.models
    }


def candidates(layout: Layout) -> list[Candidate]:
    """Present params.yaml models, then inbox folders (missing registry paths are skipped)."""
    found = []
    for name in layout.params.models:
        try:
            found.append(Candidate(name=name, location=require_model(layout, name), from_inbox=False))
        except ModelMissingError:
            continue
    found += [Candidate(name=n, location=p, from_inbox=True) for n, p in inbox_models(layout).items()]
    return found


def quantized_sha256(layout: Layout, name: str) -> str | None:
    """The base model sha256 the current packed artifact of `name` was built from (None: none)."""
    from anyprec.packed import ArtifactError, read_manifest

    try:
        return read_manifest(layout.stage_path(name, stages.PACKED))["inputs"]["base_model_sha256"]
    except (ArtifactError, KeyError):
        return None


def read_state(layout: Layout) -> dict[str, dict[str, str]]:
    try:
        return json.loads(layout.state_file.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def write_state(layout: Layout, state: dict[str, dict[str, str]]) -> None:
    write_json_atomic(layout.state_file, state)


def _run_in_flight(flow_run_id: str | None) -> bool:
    """True when the flow run triggered earlier is scheduled or running (not final)."""
    if not flow_run_id:
        return False
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(flow_run_id)
        except Exception:  # deleted or unknown run: nothing in flight
            return False
    return run.state is not None and not run.state.is_final()


@task(name="find-due-models")
def find_due(layout: Layout) -> list[Candidate]:
    """Hash every candidate and decide whether it needs a quantize-eval run."""
    from anyprec.models import hash_model_dir

    state = read_state(layout)
    out = []
    for cand in candidates(layout):
        sha = hash_model_dir(cand.location)
        previous = state.get(cand.name, {})
        if quantized_sha256(layout, cand.name) == sha:
            cand = cand.model_copy(update={"sha256": sha, "reason": "quantized at this sha256"})
        elif previous.get("sha256") == sha and _run_in_flight(previous.get("flow_run_id")):
            cand = cand.model_copy(update={"sha256": sha, "reason": "a run for this sha256 is in flight"})
        else:
            cand = cand.model_copy(update={"sha256": sha, "due": True, "reason": "new or changed base model"})
        out.append(cand)
    return out


def _dispatch(cand: Candidate, params_file: str, how: Dispatch) -> str:
    """Start quantize-eval for one candidate; returns the flow run id."""
    parameters = {"model": cand.name, "params_file": params_file}
    if cand.from_inbox:
        parameters["model_path"] = cand.location
    if how is Dispatch.SUBFLOW:
        from anyprec.flows.quantize_eval import quantize_eval

        state = quantize_eval(**parameters, return_state=True)
        state.result()  # raise if the run failed
        return str(state.state_details.flow_run_id)
    from prefect.deployments import run_deployment

    deployment = INBOX_DEPLOYMENT if cand.from_inbox else cand.name
    run = run_deployment(f"quantize-eval/{deployment}", parameters=parameters, timeout=0)
    return str(run.id)


@flow(name=FLOW_NAME, log_prints=True, validate_parameters=True)
def watch_base_models(params_file: str = "params.yaml", dispatch: Dispatch = Dispatch.DEPLOYMENT) -> list[Candidate]:
    """Trigger quantize-eval for every new or changed base model; returns what was looked at."""
    layout = Layout.from_file(params_file)
    logger = get_run_logger()
    looked = find_due(layout)
    state = read_state(layout)
    for cand in looked:
        logger.info("%s (%s): %s", cand.name, cand.sha256[:12], cand.reason)
        if cand.due:
            run_id = _dispatch(cand, str(Path(params_file).resolve()), dispatch)
            state[cand.name] = {"sha256": cand.sha256, "flow_run_id": run_id}
            write_state(layout, state)
    return looked
