"""One pipeline stage from the command line, for dvc.yaml: `python -m anyprec.tasks.stage_cli STAGE --model NAME`.

Runs the same task functions as the Prefect flow (their plain `.fn`, no Prefect server), on
the paths of anyprec.tasks.layout, so `dvc repro` and a flow run produce the same files.
DVC decides what to re-run from its own md5s of deps/params; caching here is DVC's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

from anyprec.env import apply_offline_env
from anyprec.tasks import evaluate as ev
from anyprec.tasks import quantize as q
from anyprec.tasks.bench import bench
from anyprec.tasks.caching import BaseModelInfo, StageOutput
from anyprec.tasks.layout import Layout, Stage, require_model

apply_offline_env()


def on_disk(layout: Layout, model: str, stage: Stage) -> StageOutput:
    """The StageOutput of a finished upstream stage, read back from its folder.

    Digests that matter downstream are read from the content (calibration sha256, artifact
    manifest); the intermediate stages' digests only feed Prefect cache keys, so here they
    are the folder's DVC-independent name.
    """
    path = layout.stage_path(model, stage)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run the {stage.name.lower()} stage first (dvc repro)")
    if stage is Stage.CALIBRATION:
        digest = json.loads((path / "calib.json").read_text())["sha256"]
    elif stage is Stage.PACKED:
        digest = q.manifest_digest(path)
    else:
        digest = stage.value
    return StageOutput(stage=stage.value, path=str(path), digest=digest)


def _base(layout: Layout, model: str) -> BaseModelInfo:
    return q.resolve_base_model.fn(model, require_model(layout, model))


def _run(layout: Layout, model: str, stage: Stage) -> None:
    p, out = layout.params, str(layout.stage_path(model, stage))
    base = _base(layout, model)
    up: Callable[[Stage], StageOutput] = lambda s: on_disk(layout, model, s)  # noqa: E731
    if stage is Stage.CALIBRATION:
        q.prepare_calibration.fn(base, p.calibration, out)
    elif stage is Stage.SENSITIVITY:
        q.sensitivity.fn(base, up(Stage.CALIBRATION), out)
    elif stage is Stage.SEED:
        q.seed_quantization.fn(base, up(Stage.SENSITIVITY), p.quantization, out)
    elif stage is Stage.NESTED:
        q.upscaling.fn(base, up(Stage.SENSITIVITY), up(Stage.SEED), p.quantization, out)
    elif stage is Stage.PACKED:
        q.packing.fn(base, up(Stage.CALIBRATION), up(Stage.NESTED), p.calibration, p.quantization, out)
    elif stage is Stage.PERPLEXITY:
        e = p.evaluation
        ev.perplexity.fn(base, up(Stage.PACKED), e.bits, list(e.ppl_corpora), e.ppl_window, e.ppl_max_tokens,
                         p.calibration.eval_fraction, p.calibration.seed, out)
    elif stage is Stage.LM_EVAL:
        ev.lm_eval.fn(base, up(Stage.PACKED), p.evaluation.bits, p.evaluation.tasks, p.evaluation.limit, out)
    elif stage is Stage.BENCH:
        bench.fn(base, up(Stage.PACKED), p.benchmark, out)


CLI_NAMES = {
    "calibrate": Stage.CALIBRATION, "sensitivity": Stage.SENSITIVITY, "seed": Stage.SEED,
    "upscale": Stage.NESTED, "pack": Stage.PACKED, "ppl": Stage.PERPLEXITY, "lm_eval": Stage.LM_EVAL,
    "bench": Stage.BENCH,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=list(CLI_NAMES))
    parser.add_argument("--model", required=True, help="a key of params.yaml models")
    parser.add_argument("--params", default="params.yaml", help="params file (paths are relative to its folder)")
    args = parser.parse_args(argv)
    _run(Layout.from_file(Path(args.params)), args.model, CLI_NAMES[args.stage])


if __name__ == "__main__":
    main()
