"""One pipeline stage from the command line, for dvc.yaml: `python -m anyprec.tasks.stage_cli STAGE --model NAME`.

STAGE is any name of `anyprec.tasks.pipeline.stage_names()`. Runs the same task functions as
the Prefect flow (their plain `.fn`, no Prefect server), on the paths of
anyprec.tasks.layout, so `dvc repro` and a flow run produce the same files. DVC decides what
to re-run from its own md5s of deps/params; caching here is DVC's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from anyprec import stages
from anyprec.tasks.caching import BaseModelInfo, StageOutput
from anyprec.tasks.layout import Layout, require_model
from anyprec.tasks.pipeline import EVAL_STAGES, sections, stage_names
from anyprec.tasks.quantize import resolve_base_model, run_spec


def on_disk(layout: Layout, model: str, name: str) -> StageOutput:
    """The StageOutput of a finished upstream stage, read back from its folder.

    A stage with a content digest (calibration sha256, artifact manifest) gets it from the
    content; the other digests only feed Prefect cache keys, so here they are the stage name.
    """
    spec = stages.stage(name)
    path = layout.stage_path(model, name)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run the {name} stage first (dvc repro)")
    digest = spec.digest(path) if spec.digest is not None else name
    return StageOutput(stage=name, path=str(path), digest=digest)


def run(layout: Layout, model: str, name: str) -> None:
    """Run stage `name` of the pipeline for `model`, reading its inputs from their folders."""
    out = str(layout.stage_path(model, name))
    base: BaseModelInfo = resolve_base_model.fn(model, require_model(layout, model))
    evaluation = {spec.name: spec for spec in EVAL_STAGES}
    if name in evaluation:
        spec = evaluation[name]
        spec.task.fn(base, on_disk(layout, model, stages.PACKED), **spec.arguments(layout.params), out=out)
        return
    spec = stages.stage(name)
    upstream = {n: on_disk(layout, model, n) for n in spec.inputs}
    run_spec(spec, base, upstream, stages.settings_for(spec, sections(layout.params)), out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=stage_names())
    parser.add_argument("--model", required=True, help="a key of params.yaml models")
    parser.add_argument("--params", default="params.yaml", help="params file (paths are relative to its folder)")
    args = parser.parse_args(argv)
    run(Layout.from_file(Path(args.params)), args.model, args.stage)


if __name__ == "__main__":
    main()
