"""The whole evaluation: every method at every bit-width, perplexity + zero-shot + objective.

One base HF model is loaded; each quantized method's dequantized weights are swapped in
for its evaluation and the originals restored after (baselines.quantized_weights). "ours"
is evaluated from the packed artifact through the runtime when one is given (that tests
the packed planes, LUTs and kernels), else in-process like the others. The weighted
objective of every method (ours included) is computed in-process from the same Fisher.

The report is plain JSON-able data:
    {"settings": {...}, "base": {metric: value},
     "methods": {method: {bits: {metric: value}}},
     "objective": {method: {bits: {"total": float, "layers": {module: float}}}},
     "seconds": {"<method>@<bits>": float}, "ours_source": "artifact" | "in-process"}
Metrics: ppl_<corpus>, acc_<task>, acc_norm_<task>, acc_mean, acc_norm_mean.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from anyprec.config import EvaluationConfig, QuantizationConfig
from anyprec.evaluation.baselines import DEFAULT_METHODS, Method, quantize_method, quantized_weights
from anyprec.evaluation.bigbench import PromptStyle
from anyprec.evaluation.lm_eval_runner import ZeroShotSuite, build_suite, evaluate_suite, make_lm
from anyprec.perplexity import heldout_streams

log = logging.getLogger(__name__)


def score_model(model: torch.nn.Module, lm: Any, streams: dict[str, torch.Tensor],
                suite: ZeroShotSuite | None, config: EvaluationConfig, label: str,
                progress: bool = True) -> dict[str, float]:
    """Perplexity per stream and zero-shot accuracy per task of the model as it is now."""
    from anyprec.perplexity import perplexity

    metrics = {f"ppl_{name}": perplexity(model, ids, config.ppl_window, progress, desc=f"ppl {name} {label}")
               for name, ids in streams.items()}
    if suite is not None and suite.names:
        per_task = evaluate_suite(lm, suite, config.limit)
        for task, values in per_task.items():
            metrics[f"acc_{task}"] = values["acc"]
            metrics[f"acc_norm_{task}"] = values["acc_norm"]
        metrics["acc_mean"] = sum(v["acc"] for v in per_task.values()) / len(per_task)
        metrics["acc_norm_mean"] = sum(v["acc_norm"] for v in per_task.values()) / len(per_task)
    return metrics


def _objective_entry(layers: dict[str, float]) -> dict[str, Any]:
    return {"total": float(sum(layers.values())), "layers": layers}


def run_evaluation(model: torch.nn.Module, tokenizer: Any, fisher: dict[str, torch.Tensor],
                   config: EvaluationConfig, manifest: dict[str, Any], methods: list[str] = DEFAULT_METHODS,
                   artifact: Any | None = None, cache: tuple[Path, str] | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Evaluate `methods` at every precision of `config.bits`; the report described above.

    model: the base HF model (float32, CPU; its weights are swapped and restored);
    fisher: {module: f32[N, K]} sensitivity from the same calibration as the artifact;
    manifest: the artifact's (nesting range, held-out split); artifact: an AnyPrecisionModel
    for "ours" (every width loaded when config.bits holds a fractional precision); cache:
    (folder, key) reusing baseline quantizations. A fractional precision (4.5) is a plan
    (anyprec.plans): only "ours" from the artifact runs it; baselines have integer widths only.
    """
    from anyprec.calibration import heldout_split

    methods = [Method(m).value for m in methods]
    widths = [b for b in config.bits if type(b) is int]
    plans = _plans(artifact, config.bits)
    fraction, split_seed = heldout_split(manifest["inputs"])
    nesting = manifest["seed_bits"], manifest["parent_bits"]
    quant = QuantizationConfig.from_dump(manifest["inputs"]["quantization"])  # ours: the artifact's clustering
    streams = heldout_streams(tokenizer, config.ppl_corpora, fraction, split_seed, config.ppl_max_tokens)
    source = Path(config.bigbench_source) if config.bigbench_source else None
    suite = build_suite(config.tasks, source, style=PromptStyle(config.prompt_style)) if config.tasks else None
    lm = make_lm(model, tokenizer, config.batch_size) if suite else None
    artifact_lm = make_lm(artifact.model, artifact.tokenizer, config.batch_size) if suite and artifact else None
    settings = {**config.model_dump(mode="json"), "methods": methods, "seed_bits": nesting[0],
                "parent_bits": nesting[1], "eval_fraction": fraction, "split_seed": split_seed}
    report: dict[str, Any] = {"settings": settings, "methods": {}, "objective": {}, "seconds": {},
                              "ours_source": "artifact" if artifact is not None else "in-process"}
    for name in methods:
        method = Method(name)
        if method is Method.BASE:
            start = time.perf_counter()
            report["base"] = score_model(model, lm, streams, suite, config, "base", progress)
            report["seconds"]["base"] = time.perf_counter() - start
            continue
        ours = method is Method.OURS and artifact is not None
        needed = sorted(set(widths) | {b for p in plans.values() for b in p.bits.values()}) if ours else widths
        folder, key = cache or (None, "")
        quantized = quantize_method(model, fisher, method, needed, seed_bits=nesting[0], parent_bits=nesting[1],
                                    progress=progress, cache=folder, cache_key=key, quant=quant)
        report["objective"][name] = {str(b): _objective_entry(quantized.objective[b]) for b in widths}
        report["methods"][name] = {}
        for key, precision in [(str(b), b) for b in widths] + (list(plans.items()) if ours else []):
            start = time.perf_counter()
            if ours:
                artifact.set_precision(precision)
                scored = score_model(artifact.model, artifact_lm, streams, suite, config, f"ours@{key}", progress)
            else:
                with quantized_weights(model, quantized.codes[precision]):
                    scored = score_model(model, lm, streams, suite, config, f"{name}@{key}", progress)
            report["methods"][name][key] = scored
            report["seconds"][f"{name}@{key}"] = time.perf_counter() - start
            log.info("%s @ %s bits: %s", name, key, scored)
        for key, plan in plans.items() if ours else ():
            report["objective"][name][key] = _objective_entry({m: quantized.objective[b][m] for m, b in plan.bits.items()})
        del quantized
    return report


def _plans(artifact: Any | None, bits: list[float]) -> dict[str, Any]:
    """{"4.5": Plan} for the fractional precisions of `bits` (resolved by the artifact, once)."""
    fractional = [b for b in bits if type(b) is not int]
    if fractional and artifact is None:
        log.warning("precisions %s need the packed artifact (plans): skipped in process", fractional)
        return {}
    return {str(b): artifact.resolve_precision(b, "--bits") for b in fractional}
