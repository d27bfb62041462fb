"""The server's engine: `open_engine(kind)`, which runs integer widths and plans alike.

A fractional precision (4.5) is a plan, a width per module. Both engines run it themselves:
the transformers engine through `apm(..., precision=plan)`, the native engine by giving the
row a per-module width table (`NativeEngine.add/step` take a Plan or a fractional width), so a
batch mixing plans and integer widths is one native step.
"""

from __future__ import annotations

from anyprec.engine import DecodeEngine, open_engine
from anyprec.engine.native import DEFAULT_ACTS
from anyprec.plans import Plan
from anyprec.runtime import AnyPrecisionModel


def is_plan(bits: int | float | Plan) -> bool:
    """True for a Plan or a fractional precision (run as a plan), False for an integer width."""
    return isinstance(bits, Plan) or not float(bits).is_integer()


def make_engine(apm: AnyPrecisionModel, kind: str = "auto", max_batch: int = 8,
                acts: str | None = None) -> DecodeEngine:
    """The decode engine behind the server (`open_engine(kind)`); it serves plans too.
    acts: the native engine's activations (None: its default)."""
    return open_engine(apm, kind=kind, max_batch=max_batch, acts=acts or DEFAULT_ACTS)
