"""The DVC entry point: a stage run from params.yaml, its inputs read back from their folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from anyprec import stages
from anyprec.tasks import stage_cli
from anyprec.tasks.layout import Layout


@pytest.fixture()
def params_file(tmp_path, tiny_model_dir) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({
        "models": {"tiny": {"path": str(tiny_model_dir), "arch": "llama"}},
        "calibration": {"corpus": "news", "n_samples": 2, "seq_len": 16},
    }))
    return path


def test_a_stage_runs_into_its_folder_and_reads_back_with_its_digest(params_file):
    stage_cli.main(["calib", "--model", "tiny", "--params", str(params_file)])
    layout = Layout.from_file(params_file)
    done = stage_cli.on_disk(layout, "tiny", stages.CALIB)
    assert Path(done.path) == layout.stage_path("tiny", "calib") == params_file.parent / "artifacts" / "tiny" / "calib"
    assert done.digest == stages.stage(stages.CALIB).digest(Path(done.path))


def test_a_missing_input_names_the_stage_to_run_first(params_file):
    with pytest.raises(FileNotFoundError, match=r"sensitivity is missing: run the sensitivity stage first"):
        stage_cli.main(["seed", "--model", "tiny", "--params", str(params_file)])


def test_only_the_tables_stage_names_are_accepted(params_file, capsys):
    with pytest.raises(SystemExit):
        stage_cli.main(["upscale", "--model", "tiny", "--params", str(params_file)])
    assert "invalid choice: 'upscale'" in capsys.readouterr().err
