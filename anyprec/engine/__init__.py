"""Decode engines: prefill and batched decode steps over one loaded artifact.

An engine holds up to `max_batch` sequences ("slots"), each with its own KV cache and its
own bit-width, chosen per call: `add` prefills a prompt at a precision, `step` advances
any subset of live slots by one token each (every slot at its own precision), `release`
frees a slot. Sampling, stop checks and scheduling stay with the caller (Python, once
per token); the serving layer builds continuous batching on exactly these three calls.

`NativeEngine` runs a whole step of the Llama family (llama, mistral, qwen2) in one C
call. `TransformersEngine` runs any architecture the runtime loads, one transformers
forward per sequence; it is the fallback and the oracle for the native engine.
`open_engine(apm, kind="auto")` picks the native engine where it is supported.
"""

from anyprec.engine.base import DecodeEngine, EngineError, TransformersEngine
from anyprec.engine.factory import greedy, open_engine
from anyprec.engine.native import NativeEngine

__all__ = ["DecodeEngine", "EngineError", "NativeEngine", "TransformersEngine", "greedy", "open_engine"]
