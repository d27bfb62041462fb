"""`open_engine`: the native engine where the architecture allows it, else transformers."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from anyprec.engine.base import DecodeEngine, EngineError, TransformersEngine
from anyprec.engine.head import DEFAULT_HEAD
from anyprec.engine.native import DEFAULT_ACTS, NativeEngine, check_acts, unsupported_reason
from anyprec.runtime import AnyPrecisionModel

KINDS = ("auto", "native", "transformers")
log = logging.getLogger(__name__)


def open_engine(apm: AnyPrecisionModel, kind: str = "auto", max_batch: int = 16,
                head: str = DEFAULT_HEAD, acts: str = DEFAULT_ACTS) -> DecodeEngine:
    """An engine over `apm`: kind 'native' (error if unsupported), 'transformers', or 'auto'
    (native for llama / mistral / qwen2 artifacts it supports, transformers otherwise).
    head: the native engine's output head, 'fp16' | 'int8' | 'int8w' (anyprec.engine.head);
    the transformers engine always uses the model's own head. acts: the native engine's
    activations on uint8 LUTs, 'fp32' | 'int8' (anyprec.engine.native.ACT_MODES); the
    transformers engine runs fp32 and refuses 'int8'."""
    if kind not in KINDS:
        raise EngineError(f"engine kind {kind!r} is not one of {', '.join(KINDS)}")
    check_acts(acts, apm)
    if kind == "transformers" and acts != "fp32":
        raise EngineError(f"acts {acts!r} needs the native engine; use kind='native' or acts='fp32'")
    if kind == "transformers":
        return TransformersEngine(apm, max_batch=max_batch)
    reason = unsupported_reason(apm)
    if reason is None:
        return NativeEngine(apm, max_batch=max_batch, head=head, acts=acts)
    if kind == "native":
        raise EngineError(f"the native engine cannot run this model: {reason}; use kind='transformers' or 'auto'")
    if acts != "fp32":
        raise EngineError(f"acts {acts!r} needs the native engine, which cannot run this model: {reason}")
    log.info("native engine unavailable (%s); using the transformers engine", reason)
    return TransformersEngine(apm, max_batch=max_batch)


def greedy(engine: DecodeEngine, prompt_ids: Sequence[int], bits: int, new_tokens: int) -> list[int]:
    """Greedy decoding of `new_tokens` tokens on any engine (its slot is released after)."""
    slot, logits = engine.add(prompt_ids, bits)
    try:
        out = [int(torch.argmax(logits))]
        while len(out) < new_tokens:
            out.append(int(torch.argmax(engine.step([slot], [out[-1]], [bits])[0])))
        return out
    finally:
        engine.release(slot)
