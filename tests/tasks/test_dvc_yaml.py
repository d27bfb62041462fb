"""dvc.yaml is the rendering of the stage lists, reads only typed params keys, mirrors the flow's layout."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from pydantic import BaseModel

from anyprec.config import Params, load_params
from anyprec import stages
from anyprec.tasks.dvc_yaml import render
from anyprec.tasks.layout import Layout
from anyprec.tasks.pipeline import stage_names
from anyprec.tasks.versioning import dvc_stage_names

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = re.compile(r"\$\{([^}]+)\}")


def dvc_yaml() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def typed_key_exists(model: type[BaseModel], value, dotted: str) -> bool:
    """True when `dotted` names a field of the typed model (dict-valued fields by their keys)."""
    head, _, rest = dotted.partition(".")
    if isinstance(value, dict) and not isinstance(value, BaseModel):
        return head in value and (not rest or typed_key_exists(model, value[head], rest))
    fields = type(value).model_fields
    if head not in fields:
        return False
    child = getattr(value, head)
    return not rest or typed_key_exists(model, child, rest)


def used_keys(params: Params) -> set[str]:
    """Every params key dvc.yaml reads (${...} templates and `params:` lists), per dvc_models item."""
    keys = set()
    for item in params.pipeline.dvc_models:
        for text in strings(dvc_yaml()):
            keys |= set(TEMPLATE.findall(text.replace("${item}", item)))
        for stage in dvc_yaml()["stages"].values():
            keys |= {k.replace("${item}", item) for k in stage["do"].get("params", []) if isinstance(k, str)}
    return keys


def strings(node) -> list[str]:
    """Every string (keys and values) in a parsed YAML tree: comments are not part of it."""
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in strings(k) + strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings(v)]
    return [node] if isinstance(node, str) else []


def test_every_params_key_in_dvc_yaml_is_in_the_typed_model():
    params = load_params(REPO / "params.yaml")
    keys = used_keys(params)
    assert "calibration" in keys and "pipeline.artifacts_dir" in keys
    missing = sorted(k for k in keys if not typed_key_exists(Params, params, k))
    assert not missing, f"dvc.yaml reads keys that anyprec.config.Params does not define: {missing}"


def test_every_params_key_in_dvc_yaml_is_written_in_params_yaml():
    # DVC reads the file, not the typed defaults: a key only defaulted in Params breaks `dvc repro`.
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    params = load_params(REPO / "params.yaml")
    missing = []
    for key in used_keys(params):
        node = raw
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                missing.append(key)
                break
            node = node[part]
    assert not missing, f"params.yaml must spell out these keys dvc.yaml reads: {sorted(missing)}"


def test_a_typo_would_be_caught():
    params = load_params(REPO / "params.yaml")
    assert not typed_key_exists(Params, params, "evaluation.ppl_windows")
    assert not typed_key_exists(Params, params, "models.no-such-model")


def test_stage_outputs_match_the_flow_layout():
    layout = Layout.from_file(REPO / "params.yaml")
    stages = dvc_yaml()["stages"]
    for model in layout.params.pipeline.dvc_models:
        assert {n.split("@")[0] for n in dvc_stage_names(model)} == set(stages)
        outs = set()
        for stage in stages.values():
            for entry in stage["do"].get("outs", []) + stage["do"].get("metrics", []):
                path = next(iter(entry)) if isinstance(entry, dict) else entry
                outs.add(path.replace("${item}", model)
                         .replace("${pipeline.artifacts_dir}", layout.params.pipeline.artifacts_dir)
                         .replace("${pipeline.reports_dir}", layout.params.pipeline.reports_dir))
        expected = {str(layout.stage_path(model, s).relative_to(layout.root)) for s in stage_names()}
        assert outs == expected


def test_packed_artifact_is_a_dvc_model_artifact():
    layout = Layout.from_file(REPO / "params.yaml")
    artifacts = dvc_yaml()["artifacts"]
    for model in layout.params.pipeline.dvc_models:
        assert artifacts[model]["type"] == "model"
        assert artifacts[model]["path"] == str(layout.stage_path(model, stages.PACKED).relative_to(layout.root))


def test_committed_dvc_yaml_is_the_rendering_of_the_stage_lists():
    assert (REPO / "dvc.yaml").read_text() == render(REPO / "params.yaml"), (
        "dvc.yaml is stale: run `python -m anyprec.tasks.dvc_yaml`")


def test_only_the_model_artifact_and_reports_are_pushed():
    for name, stage in dvc_yaml()["stages"].items():
        for entry in stage["do"].get("outs", []):
            pushed = not isinstance(entry, dict) or next(iter(entry.values())).get("push", True)
            assert pushed == (name == stages.PACKED), name


def _tracked(path: str) -> bool:
    import subprocess

    done = subprocess.run(["git", "ls-files", "--error-unmatch", path], cwd=REPO, capture_output=True, check=False)
    return done.returncode == 0


def test_a_tracked_dvc_lock_matches_the_code_it_describes():
    # dvc.lock is local by default (.gitignore); one committed to publish a run must describe this code.
    if not _tracked("dvc.lock"):
        return
    import hashlib

    lock = yaml.safe_load((REPO / "dvc.lock").read_text())
    for name, entry in lock["stages"].items():
        stage = dvc_yaml()["stages"][name.split("@")[0]]
        assert entry["cmd"] == stage["do"]["cmd"].replace("${item}", name.split("@")[1]), name
        for dep in entry["deps"]:
            path = REPO / dep["path"]
            if path.is_file():
                stale = f"dvc.lock is stale for {dep['path']}: re-run dvc repro"
                assert dep["md5"] == hashlib.md5(path.read_bytes()).hexdigest(), stale


def test_dry_run_on_a_fresh_clone_lists_every_stage(tmp_path):
    import shutil
    import subprocess
    import sys

    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO / name, tmp_path / name)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "-q"], cwd=tmp_path, check=True)
    # --force: DVC's run-cache check hashes the deps of each stage, which a fresh clone lacks.
    done = subprocess.run([*dvc, "repro", "--dry", "--force"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name in stage_names():
        assert f"stage_cli {name} --model smollm2-135m" in done.stdout, name
    assert not (tmp_path / "artifacts").exists()
