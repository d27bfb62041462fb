"""The md5 MLflow runs record is the one DVC itself records for the artifact."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import yaml

from anyprec.tasks.versioning import dvc_md5


def test_dvc_md5_matches_dvc_add(tmp_path):
    data = tmp_path / "artifact"
    (data / "sub").mkdir(parents=True)
    (data / "manifest.json").write_text('{"format": "x"}\n')
    (data / "sub" / "planes.bin").write_bytes(bytes(range(256)) * 17)
    ours = dvc_md5(data)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True, env=env)
    subprocess.run([*dvc, "add", "-q", "artifact"], cwd=tmp_path, check=True, env=env)
    recorded = yaml.safe_load((tmp_path / "artifact.dvc").read_text())["outs"][0]["md5"]
    assert ours == recorded and ours.endswith(".dir")
    single = data / "manifest.json"
    shutil.copy(single, tmp_path / "one.json")
    subprocess.run([*dvc, "add", "-q", "one.json"], cwd=tmp_path, check=True, env=env)
    assert dvc_md5(tmp_path / "one.json") == yaml.safe_load((tmp_path / "one.json.dvc").read_text())["outs"][0]["md5"]
