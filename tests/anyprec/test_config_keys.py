"""params.yaml: every key is read by code (a dead key fails the test)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
READERS = ("anyprec", "tasks", "flows", "dashboards", "kernels")
# mappings whose keys are the user's data (typed dict[str, ...]), read as a whole, not field by field
DATA_MAPS = ("serving.auto.cues.",)


def leaf_keys(node: dict, prefix: str = "") -> list[str]:
    """Dotted paths of the leaves of a params tree; model entries by field (models.*.path)."""
    if prefix in DATA_MAPS:
        return [prefix[:-1]]
    keys = []
    for key, value in node.items():
        path = f"{prefix}{key}" if prefix != "models." else "models.*"
        if isinstance(value, dict):
            keys += leaf_keys(value, path + ".")
        else:
            keys.append(path)
    return keys


def code_text() -> str:
    """The source that may read params: every module but the typed model itself."""
    files = [p for d in READERS for p in (REPO / d).rglob("*.py") if p.name != "config.py"]
    return "\n".join(p.read_text(encoding="utf-8") for p in files) + (REPO / "dvc.yaml").read_text()


def unread(keys: list[str], text: str) -> list[str]:
    """Keys whose last part is never read as an attribute (`.key`) or a dvc.yaml param."""
    return [k for k in keys if not re.search(rf"\.{re.escape(k.rsplit('.', 1)[-1])}\b", text)]


def test_every_params_yaml_key_is_read_somewhere():
    keys = leaf_keys(yaml.safe_load((REPO / "params.yaml").read_text()))
    assert "calibration.n_samples" in keys and "models.*.arch" in keys and "serving.auto.cues" in keys
    assert not unread(keys, code_text()), "params.yaml keys nothing reads: remove them or read them"


def test_a_dead_key_is_reported():
    assert unread(["evaluation.no_such_setting"], code_text()) == ["evaluation.no_such_setting"]
