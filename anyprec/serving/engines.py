"""The server's engine: the fast engine for integer widths, the transformers engine for plans.

The native engine runs one bit-width per sequence; a fractional precision (4.5) is a plan, a
width per module, which only the transformers path runs (`apm(..., precision=4.5)`). The
`PlanRouting` engine keeps the `DecodeEngine` contract over both: slots of the fallback are
numbered after the primary's, and a step splits its rows between the two.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from anyprec.engine import DecodeEngine, EngineError, TransformersEngine, open_engine
from anyprec.plans import Plan
from anyprec.runtime import AnyPrecisionModel


def is_plan(bits: int | float | Plan) -> bool:
    """True for a Plan or a fractional precision (run as a plan), False for an integer width."""
    return isinstance(bits, Plan) or not float(bits).is_integer()


class PlanRouting:
    """`DecodeEngine` over `primary` (integer widths) and `plans` (a TransformersEngine).

    Attributes as the contract: max_batch (the primary's; the scheduler keeps the live
    sequences of both under it), context_length (the smaller of the two), vocab_size."""

    def __init__(self, primary: DecodeEngine, plans: TransformersEngine) -> None:
        self.primary, self.plans = primary, plans
        self.max_batch = primary.max_batch
        self.context_length = min(primary.context_length, plans.context_length)
        self.vocab_size = primary.vocab_size
        self._offset = primary.max_batch

    def _split(self, slot: int) -> tuple[DecodeEngine, int]:
        return (self.plans, slot - self._offset) if slot >= self._offset else (self.primary, slot)

    def add(self, prompt_ids: Sequence[int], bits: int | float | Plan) -> tuple[int, torch.Tensor]:
        if is_plan(bits):
            slot, logits = self.plans.add(prompt_ids, bits)
            return slot + self._offset, logits
        return self.primary.add(prompt_ids, int(bits))

    def step(self, slots: Sequence[int], tokens: Sequence[int], bits: Sequence[int | float | Plan]) -> torch.Tensor:
        if not (len(slots) == len(tokens) == len(bits)):
            raise EngineError(f"step got {len(slots)} slots, {len(tokens)} tokens, {len(bits)} bit-widths")
        if all(s < self._offset for s in slots):
            return self.primary.step(slots, tokens, bits)  # no plan in the batch: no copy
        logits = torch.empty(len(slots), self.vocab_size, dtype=torch.float32)
        for engine in (self.primary, self.plans):
            rows = [i for i, s in enumerate(slots) if self._split(s)[0] is engine]
            if rows:
                logits[rows] = engine.step([self._split(slots[i])[1] for i in rows], [tokens[i] for i in rows],
                                           [bits[i] for i in rows])
        return logits

    def length(self, slot: int) -> int:
        engine, local = self._split(slot)
        return engine.length(local)

    def release(self, slot: int) -> None:
        engine, local = self._split(slot)
        engine.release(local)


def make_engine(apm: AnyPrecisionModel, kind: str = "auto", max_batch: int = 8) -> DecodeEngine:
    """The decode engine behind the server: `open_engine(kind)`, plus the transformers engine
    for plans when the primary is the native one (the transformers engine runs plans itself)."""
    primary = open_engine(apm, kind=kind, max_batch=max_batch)
    if isinstance(primary, TransformersEngine):
        return primary
    return PlanRouting(primary, TransformersEngine(apm, max_batch=max_batch))
