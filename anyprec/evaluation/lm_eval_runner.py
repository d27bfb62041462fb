"""Zero-shot lm-eval on an in-memory model, offline.

A suite is built once (tasks and their local data loaded), then evaluated as often as
needed: once per bit-width, reusing the same `HFLM` wrapper because an any-precision
model changes precision in place. BIG-bench specs ("social_iqa",
"goal_step_wikihow:step_inference", "bigbench:<any task>") are converted to local
jsonl (see bigbench.py); any other name ("arc_easy", "hellaswag", ...) is an lm-eval
built-in task whose dataset must already be in the local Hugging Face cache.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from anyprec.evaluation import bigbench

BIGBENCH_PREFIX = "bigbench:"
METRICS = ("acc", "acc_norm")


@dataclass
class ZeroShotSuite:
    """Loaded lm-eval tasks. `names` maps lm-eval task name -> short name used in metric keys."""

    names: dict[str, str]
    tasks: dict


def split_task_specs(specs: list[str]) -> tuple[list[str], list[str]]:
    """(BIG-bench specs, lm-eval built-in names).

    BIG-bench: "bb_<name>", a default BIG-bench task ("social_iqa", "cause_and_effect:two_sentences")
    or "bigbench:<task>[:<subtask>]" for any other BIG-bench multiple-choice task.
    """
    bb_specs, builtin = [], []
    for spec in specs:
        if spec.startswith(BIGBENCH_PREFIX):
            bb_specs.append(spec[len(BIGBENCH_PREFIX):])
        elif spec.startswith(bigbench.TASK_PREFIX) or spec.partition(":")[0] in bigbench.DEFAULT_TASKS:
            bb_specs.append(spec)
        else:
            builtin.append(spec)
    return bb_specs, builtin


def _load_tasks(names: list[str], include_path: Path | None, include_defaults: bool) -> dict:
    """{lm-eval task name: Task} for `names` (their datasets loaded)."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(include_path) if include_path else None,
                          include_defaults=include_defaults)
    unknown = [name for name in names if name not in manager.all_tasks]
    if unknown:
        raise ValueError(f"unknown lm-eval task(s) {unknown}: BIG-bench tasks are "
                         f"{list(bigbench.DEFAULT_TASKS)} or '{BIGBENCH_PREFIX}<task>[:<subtask>]'; "
                         "other names must be lm-eval built-in tasks (`lm-eval ls tasks`)")
    return dict(manager.load(names)["tasks"])


def _load_builtin(name: str) -> dict:
    """One built-in task; a clear error when its dataset is not available offline."""
    try:
        return _load_tasks([name], None, include_defaults=True)
    except ValueError:
        raise
    except Exception as err:  # datasets raises several types when offline and uncached
        raise RuntimeError(
            f"lm-eval task {name!r}: its dataset is not available offline ({type(err).__name__}: "
            f"{err}). Populate the Hugging Face datasets cache on a machine with internet "
            f"(`lm-eval run --tasks {name} --limit 1 ...` or datasets.load_dataset), copy "
            "~/.cache/huggingface/datasets here, or drop the task from --tasks"
        ) from err


def build_suite(specs: list[str], bigbench_source: Path | None = None, task_dir: Path | None = None,
                style: bigbench.PromptStyle = bigbench.PromptStyle.COMPLETION) -> ZeroShotSuite:
    """Load every task of `specs`, converting BIG-bench tasks first (cached per prompt style)."""
    bb_specs, builtin = split_task_specs(specs)
    names: dict[str, str] = {}
    tasks: dict = {}
    if bb_specs:
        local_dir, keys = bigbench.ensure_tasks(bb_specs, bigbench_source, task_dir, style)
        lm_names = [key.lm_eval_name for key in keys]
        tasks.update(_load_tasks(lm_names, local_dir, include_defaults=False))
        names.update({key.lm_eval_name: key.name for key in keys})
    for name in builtin:
        tasks.update(_load_builtin(name))
        names[name] = name
    return ZeroShotSuite(names=names, tasks=tasks)


def make_lm(model, tokenizer, batch_size: int = 8):
    """An lm-eval HFLM around an in-memory HF causal LM (CPU). Build once, reuse per bit-width."""
    from lm_eval.models.huggingface import HFLM

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device="cpu")


def evaluate_suite(lm, suite: ZeroShotSuite, limit: int | None = None) -> dict[str, dict[str, float]]:
    """Run every task; {short name: {"acc", "acc_norm", "acc_stderr", "n"}}.

    limit: first N examples per task (None = all).
    """
    from lm_eval.evaluator import evaluate

    out = evaluate(lm, {"tasks": suite.tasks}, limit=limit, bootstrap_iters=0, log_samples=False,
                   verbosity="ERROR")
    return {suite.names[name]: _task_metrics(out, name) for name in suite.names}


def _task_metrics(out: dict, name: str) -> dict[str, float]:
    """acc / acc_norm / acc stderr / example count of one task from lm-eval's output."""
    res = out["results"][name]
    metrics = {metric: float(res[f"{metric},none"]) for metric in METRICS}
    n = int(out["n-samples"][name]["effective"])
    acc = metrics["acc"]
    # Binomial standard error (lm-eval's own needs bootstrap iterations we skip for speed).
    metrics["acc_stderr"] = math.sqrt(acc * (1.0 - acc) / (n - 1)) if n > 1 else float("nan")
    metrics["n"] = float(n)
    return metrics
