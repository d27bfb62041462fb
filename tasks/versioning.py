"""DVC side of the pipeline: the md5 DVC gives an output, and recording flow outputs in dvc.lock.

MLflow runs carry the DVC md5 of the artifact they measured (`dvc_md5` tag), the same value
`dvc.lock` lists for the `packed` out, so a number traces to the exact bytes (`dvc get`,
`dvc checkout` by that hash).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path



def dvc_md5(path: str | Path) -> str:
    """The md5 DVC records for a file or directory (directories end in '.dir'), as in dvc.lock."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"cannot hash {path}: it does not exist")
    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory(prefix="anyprec-dvc-") as scratch:
        _, _, obj = build(HashFileDB(fs, scratch), str(path), fs, "md5", dry_run=True)
    return obj.hash_info.value


def dvc_stage_names(model: str) -> list[str]:
    """The dvc.yaml stages (foreach over pipeline.dvc_models) that produce one model's outputs."""
    from anyprec.tasks.pipeline import stage_names

    return [f"{stage}@{model}" for stage in stage_names()]


def dvc_commit(root: Path, model: str) -> str:
    """`dvc commit -f` the model's stages so dvc.lock matches what the flow wrote; returns dvc's output.

    Runs in `root` (it must hold .dvc/ and dvc.yaml). Commits store the outputs in the DVC
    cache, so `dvc push` can upload them and `dvc status` is clean afterwards.
    """
    if not (root / ".dvc").is_dir() or not (root / "dvc.yaml").is_file():
        raise FileNotFoundError(f"{root} has no .dvc/ or dvc.yaml: run `dvc init` there or set pipeline.dvc_commit: false")
    cmd = [sys.executable, "-m", "dvc", "commit", "--force", *dvc_stage_names(model)]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd[2:])}` failed in {root}:\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr
