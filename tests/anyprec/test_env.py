"""The offline environment is applied once, by `import anyprec`, and a user's values win."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from anyprec.env import OFFLINE_ENV


def _environment_after_import(env: dict[str, str]) -> dict[str, str]:
    code = "import json, os, anyprec.models; print(json.dumps(dict(os.environ)))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_importing_the_package_applies_every_offline_variable():
    clean = {k: v for k, v in os.environ.items() if k not in OFFLINE_ENV}
    seen = _environment_after_import({**clean, "DO_NOT_TRACK": "yes"})
    assert seen["DO_NOT_TRACK"] == "yes"  # the user's value is kept
    assert {k: seen[k] for k in OFFLINE_ENV if k != "DO_NOT_TRACK"} == {
        k: v for k, v in OFFLINE_ENV.items() if k != "DO_NOT_TRACK"}



def test_only_the_package_import_applies_the_offline_environment():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    callers = sorted(str(p.relative_to(root)) for folder in ("anyprec", "flows", "tasks", "dashboards", "kernels")
                     for p in (root / folder).rglob("*.py") if "apply_offline_env()\n" in p.read_text())
    assert callers == ["anyprec/__init__.py"], callers
