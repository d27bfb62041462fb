"""Fixtures for flow tests: one Prefect test server per session and a tiny pipeline root."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

import anyprec  # noqa: F401  (importing it applies the offline environment, before Prefect reads it)


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect server + database for the whole session (started once: ~10 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def tiny_params(model_dir: Path) -> dict:
    """params.yaml content for a fast run on the tiny model (seconds per stage)."""
    return {
        "models": {
            "tiny": {"path": str(model_dir), "arch": "llama"},
            "llama2-7b": {"path": "models/llama2-7b", "arch": "llama"},
        },
        "calibration": {"corpus": "news", "n_samples": 4, "seq_len": 32, "seed": 0, "eval_fraction": 0.2},
        "quantization": {"seed_bits": 3, "parent_bits": 4, "method": "optimal"},
        "evaluation": {"bits": [3, 4], "ppl_corpora": ["news"], "ppl_window": 32, "ppl_max_tokens": 128,
                       "tasks": [], "limit": 4},
        "benchmark": {"gemv_shape": [64, 128], "bits": [3, 4], "decode_tokens": 4, "threads": 1, "repeats": 3,
                      "rotate_mib": 1, "bandwidth_mib": 4, "decode_repeats": 1,
                      "publish_under_load": True},  # the tests check the plumbing, on a busy machine
        "pipeline": {"dvc_models": [], "dvc_commit": False, "inbox_dir": "inbox"},
    }


def write_params(root: Path, params: dict) -> Path:
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def pipeline_root(tmp_path_factory, tiny_model_dir) -> Path:
    """A folder with its own params.yaml and a private copy of the tiny model."""
    root = tmp_path_factory.mktemp("pipeline")
    model_dir = shutil.copytree(tiny_model_dir, root / "models" / "tiny")
    write_params(root, tiny_params(model_dir))
    return root


@pytest.fixture()
def own_pipeline_root(tmp_path, tiny_model_dir) -> Path:
    """Like pipeline_root, for one test alone (its outputs do not reach the shared one)."""
    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "models" / "tiny")
    write_params(tmp_path, tiny_params(model_dir))
    return tmp_path
