"""Pipeline layout: a registered model's folder and declared architecture are checked."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml


def test_a_model_whose_config_disagrees_with_its_arch_is_refused(tiny_model_dir, tmp_path):
    from anyprec.tasks.layout import Layout, require_model

    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "m")
    model_type = json.loads((model_dir / "config.json").read_text())["model_type"]
    for arch, ok in ((model_type, True), ("opt", False)):
        params = tmp_path / "params.yaml"
        params.write_text(yaml.safe_dump({"models": {"m": {"path": str(model_dir), "arch": arch}}}))
        layout = Layout.from_file(params)
        if ok:
            assert require_model(layout, "m") == str(model_dir)
        else:
            with pytest.raises(ValueError, match=r"models\.m\.arch is 'opt'"):
                require_model(layout, "m")
