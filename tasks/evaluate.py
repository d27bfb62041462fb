"""Prefect tasks for the evaluation stages: perplexity (`ppl`), lm-eval accuracy (`eval`).

Each writes one JSON report (reports/<model>/{ppl,eval,bench}.json) and returns its content.
They take only the settings they read (not whole sections), so e.g. changing
`evaluation.tasks` re-runs lm-eval but not perplexity. Cached like the quantization tasks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from anyprec.fileio import write_json_atomic
from anyprec.tasks.caching import CACHED, BaseModelInfo, StageOutput


def write_report(out: str | Path, report: dict[str, Any]) -> dict[str, Any]:
    """Write a JSON report atomically (sorted keys, so identical content gives identical bytes)."""
    write_json_atomic(out, report)
    return report


@task(name="ppl", **CACHED)
def perplexity(
    base: BaseModelInfo,
    packed: StageOutput,
    bits: list[float],
    corpora: list[str],
    window: int,
    max_tokens: int | None,
    eval_fraction: float,
    split_seed: int,
    out: str,
) -> dict[str, Any]:
    """Perplexity per corpus of the base model (fp32) and of the artifact at each precision
    (an integer width, or a fractional one such as 4.5: a precision plan).

    Report: {"base": {corpus: ppl}, "bits": {"b": {corpus: ppl}}, "window": int, "tokens": {corpus: T}}.
    """
    from anyprec.models import load_model
    from anyprec.perplexity import heldout_streams, perplexity_per_bits
    from anyprec.perplexity import perplexity as ppl
    from anyprec.precision import load_with_precisions

    apm, precisions = load_with_precisions(packed.path, bits, "evaluation.bits")
    streams = heldout_streams(apm.tokenizer, corpora, eval_fraction, split_seed, max_tokens)
    log = get_run_logger()

    def report(label: Any, corpus: str, value: float) -> None:
        log.info("ppl %s, %s: %.3f over %d tokens", label, corpus, value, streams[corpus].numel())

    per_bits = perplexity_per_bits(apm, precisions, streams, window, progress=False, on_result=report)
    del apm
    model, _ = load_model(base.location)
    base_ppl = {}
    for corpus, ids in streams.items():
        base_ppl[corpus] = ppl(model, ids, window, progress=False)
        report("base", corpus, base_ppl[corpus])
    report = {
        "base": base_ppl,
        "bits": per_bits,
        "window": window,
        "tokens": {c: int(ids.numel()) for c, ids in streams.items()},
    }
    return write_report(out, report)


def _accuracies(results: dict[str, dict[str, float]]) -> dict[str, float]:
    return {name: metrics["acc"] for name, metrics in results.items()}


@task(name="eval", **CACHED)
def lm_eval(
    base: BaseModelInfo, packed: StageOutput, bits: list[float], tasks: list[str], limit: int | None, out: str
) -> dict[str, Any]:
    """Zero-shot accuracy per lm-eval task of the base model and of each precision (4.5: a plan).

    Report: {"base": {task: acc}, "bits": {"b": {task: acc}}, "details": {"base"|"b": {task: metrics}}}.
    """
    if not tasks:  # nothing configured: an empty report keeps the stage's output (and DVC's) defined
        return write_report(out, {"base": {}, "bits": {}, "details": {}, "limit": limit})
    from anyprec.evaluation.lm_eval_runner import build_suite, evaluate_suite, make_lm
    from anyprec.models import load_model
    from anyprec.precision import load_with_precisions

    suite = build_suite(tasks)
    apm, precisions = load_with_precisions(packed.path, bits, "evaluation.bits")
    lm = make_lm(apm.model, apm.tokenizer)
    details: dict[str, dict[str, dict[str, float]]] = {}
    log = get_run_logger()
    for key, precision in precisions.items():
        with apm.precision(precision):
            details[key] = evaluate_suite(lm, suite, limit)
        log.info("eval %s-bit: %s", key, {name: round(m["acc"], 3) for name, m in details[key].items()})
    del apm, lm
    model, tokenizer = load_model(base.location)
    details["base"] = evaluate_suite(make_lm(model, tokenizer), suite, limit)
    report = {
        "base": _accuracies(details["base"]),
        "bits": {key: _accuracies(details[key]) for key in precisions},
        "details": details,
        "limit": limit,
    }
    return write_report(out, report)
