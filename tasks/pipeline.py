"""The whole quantize-eval pipeline as data: the library's quantization stages
(`anyprec.stages.STAGES`) followed by the evaluation stages declared here.

Each evaluation stage reads the packed artifact and writes one JSON report. The flow, the
DVC entry point (`anyprec.tasks.stage_cli`) and the dvc.yaml renderer (`anyprec.tasks.dvc_yaml`)
read both lists; nothing else names a stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from prefect import Task

from anyprec import stages
from anyprec.config import Params
from anyprec.tasks import evaluate as ev
from anyprec.tasks.bench import bench


@dataclass(frozen=True)
class EvalStage:
    """One evaluation stage: its task, the params keys and source files it depends on, and the
    task arguments those keys give (`arguments(params)`)."""

    name: str
    task: Task
    params: tuple[str, ...]
    code: tuple[str, ...]
    arguments: Callable[[Params], dict[str, Any]]
    enabled: Callable[[Params], bool] = lambda params: True


def _ppl_arguments(p: Params) -> dict[str, Any]:
    e = p.evaluation
    return {"bits": e.bits, "corpora": list(e.ppl_corpora), "window": e.ppl_window, "max_tokens": e.ppl_max_tokens,
            "eval_fraction": p.calibration.eval_fraction, "split_seed": p.calibration.seed}


EVAL_STAGES: list[EvalStage] = [
    EvalStage("ppl", ev.perplexity,
              params=("calibration.eval_fraction", "calibration.seed", "evaluation.bits", "evaluation.ppl_corpora",
                      "evaluation.ppl_window", "evaluation.ppl_max_tokens"),
              code=("anyprec/perplexity.py", "anyprec/runtime.py"), arguments=_ppl_arguments),
    EvalStage("eval", ev.lm_eval, params=("evaluation.bits", "evaluation.tasks", "evaluation.limit"),
              code=("anyprec/evaluation",),
              arguments=lambda p: {"bits": p.evaluation.bits, "tasks": p.evaluation.tasks,
                                   "limit": p.evaluation.limit}),
    # Last: timings are taken with nothing else of this flow running.
    EvalStage("bench", bench, params=("benchmark",), code=("tasks/bench.py",),
              arguments=lambda p: {"benchmark": p.benchmark}, enabled=lambda p: bool(p.benchmark.bits)),
]

REPORT_NAMES = tuple(spec.name for spec in EVAL_STAGES)


def sections(params: Params) -> dict[str, Any]:
    """{section name: typed section} of a Params, what anyprec.stages.settings_for picks from."""
    return {name: getattr(params, name) for name in type(params).model_fields}


def stage_names() -> list[str]:
    """Every stage of the pipeline, in order."""
    return [spec.name for spec in stages.STAGES] + list(REPORT_NAMES)
