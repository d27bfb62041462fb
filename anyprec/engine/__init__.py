"""Decode engines: prefill and batched decode steps over one loaded artifact.

An engine holds up to `max_batch` sequences ("slots"), each with its own KV cache and its
own bit-width, chosen per call: `add` prefills a prompt at a precision, `step` advances
any subset of live slots by one token each (every slot at its own precision), `release`
frees a slot. Sampling, stop checks and scheduling stay with the caller (Python, once
per token); the serving layer builds continuous batching on exactly these three calls.

`TransformersEngine` runs any architecture the runtime loads, one transformers forward
per sequence; it is the fallback and the oracle for the native engine.
"""

from anyprec.engine.base import DecodeEngine, EngineError, TransformersEngine

__all__ = ["DecodeEngine", "EngineError", "TransformersEngine"]
