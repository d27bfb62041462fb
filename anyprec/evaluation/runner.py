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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from anyprec.config import EvaluationConfig
from anyprec.evaluation.baselines import DEFAULT_METHODS, Method, quantize_method, quantized_weights
from anyprec.evaluation.bigbench import PromptStyle
from anyprec.evaluation.lm_eval_runner import ZeroShotSuite, build_suite, evaluate_suite, make_lm
from anyprec.perplexity import heldout_streams

log = logging.getLogger(__name__)


# The defaults shared with params.yaml's `evaluation` section live in EvaluationConfig only.
_CONFIG = EvaluationConfig()


@dataclass
class EvalSettings:
    """What to evaluate. limit: examples per task (None = all); ppl_max_tokens: cap per corpus;
    quant_cache: folder reusing baseline quantizations whose key equals quant_cache_key.
    The first six fields default to EvaluationConfig's; the rest are evaluation-only settings."""

    bits: list[int] = field(default_factory=lambda: list(_CONFIG.bits))
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    tasks: list[str] = field(default_factory=lambda: list(_CONFIG.tasks))
    limit: int | None = _CONFIG.limit
    corpora: list[str] = field(default_factory=lambda: list(_CONFIG.ppl_corpora))
    window: int = _CONFIG.ppl_window
    ppl_max_tokens: int | None = _CONFIG.ppl_max_tokens
    batch_size: int = 8
    seed_bits: int = 3
    parent_bits: int = 8
    eval_fraction: float = 0.2
    split_seed: int = 0
    bigbench_source: str | None = None
    prompt_style: str = PromptStyle.COMPLETION.value
    quant_cache: str | None = None
    quant_cache_key: str = ""
    progress: bool = True

    def __post_init__(self) -> None:
        self.methods = [Method(m).value for m in self.methods]
        self.prompt_style = PromptStyle(self.prompt_style).value
        bad = [b for b in self.bits if not 1 <= b <= 8]
        if bad:
            raise ValueError(f"bits {bad} outside 1..8")


def score_model(model: torch.nn.Module, lm: Any, streams: dict[str, torch.Tensor],
                suite: ZeroShotSuite | None, settings: EvalSettings, label: str) -> dict[str, float]:
    """Perplexity per stream and zero-shot accuracy per task of the model as it is now."""
    from anyprec.perplexity import perplexity

    metrics = {f"ppl_{name}": perplexity(model, ids, settings.window, settings.progress,
                                         desc=f"ppl {name} {label}")
               for name, ids in streams.items()}
    if suite is not None and suite.names:
        per_task = evaluate_suite(lm, suite, settings.limit)
        for task, values in per_task.items():
            metrics[f"acc_{task}"] = values["acc"]
            metrics[f"acc_norm_{task}"] = values["acc_norm"]
        metrics["acc_mean"] = sum(v["acc"] for v in per_task.values()) / len(per_task)
        metrics["acc_norm_mean"] = sum(v["acc_norm"] for v in per_task.values()) / len(per_task)
    return metrics


def _objective_entry(layers: dict[str, float]) -> dict[str, Any]:
    return {"total": float(sum(layers.values())), "layers": layers}


def run_evaluation(model: torch.nn.Module, tokenizer: Any, fisher: dict[str, torch.Tensor],
                   settings: EvalSettings, artifact: Any | None = None) -> dict[str, Any]:
    """Evaluate every method of `settings` at every bit-width; the report described above.

    model: the base HF model (float32, CPU; its weights are swapped and restored);
    fisher: {module: f32[N, K]} sensitivity from the same calibration as the artifact;
    artifact: an AnyPrecisionModel for "ours" (its bit-widths must include settings.bits).
    """
    streams = heldout_streams(tokenizer, settings.corpora, settings.eval_fraction, settings.split_seed,
                              settings.ppl_max_tokens)
    source = Path(settings.bigbench_source) if settings.bigbench_source else None
    style = PromptStyle(settings.prompt_style)
    suite = build_suite(settings.tasks, source, style=style) if settings.tasks else None
    lm = make_lm(model, tokenizer, settings.batch_size) if suite else None
    artifact_lm = make_lm(artifact.model, artifact.tokenizer, settings.batch_size) if suite and artifact else None
    report: dict[str, Any] = {"settings": asdict(settings), "methods": {}, "objective": {}, "seconds": {},
                              "ours_source": "artifact" if artifact is not None else "in-process"}
    for name in settings.methods:
        method = Method(name)
        if method is Method.BASE:
            start = time.perf_counter()
            report["base"] = score_model(model, lm, streams, suite, settings, "base")
            report["seconds"]["base"] = time.perf_counter() - start
            continue
        cache = Path(settings.quant_cache) if settings.quant_cache else None
        quantized = quantize_method(model, fisher, method, settings.bits, settings.seed_bits,
                                    settings.parent_bits, settings.progress, cache, settings.quant_cache_key)
        report["objective"][name] = {str(b): _objective_entry(quantized.objective[b]) for b in settings.bits}
        report["methods"][name] = {}
        for b in settings.bits:
            start = time.perf_counter()
            if method is Method.OURS and artifact is not None:
                report["methods"][name][str(b)] = _score_artifact(artifact, artifact_lm, b, streams, suite,
                                                                   settings)
            else:
                with quantized_weights(model, quantized.codes[b]):
                    report["methods"][name][str(b)] = score_model(model, lm, streams, suite, settings,
                                                                  f"{name}@{b}")
            report["seconds"][f"{name}@{b}"] = time.perf_counter() - start
            log.info("%s @ %d bits: %s", name, b, report["methods"][name][str(b)])
        del quantized
    return report


def _score_artifact(artifact: Any, lm: Any, bits: int, streams: dict[str, torch.Tensor],
                    suite: ZeroShotSuite | None, settings: EvalSettings) -> dict[str, float]:
    """Score the packed any-precision model at `bits` (lm: an HFLM around artifact.model)."""
    if bits not in artifact.bits_available:
        raise ValueError(f"the artifact serves bits {artifact.bits_available}, not {bits}; "
                         "load it with those bits or drop them from --bits")
    artifact.set_precision(bits)
    return score_model(artifact.model, lm, streams, suite, settings, f"ours@{bits}")
