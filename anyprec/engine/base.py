"""The engine contract and the transformers fallback engine (any architecture; the oracle)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch

from anyprec.runtime import AnyPrecisionModel


class EngineError(ValueError):
    """A request the engine cannot run (no free slot, unknown slot, past the context)."""


class DecodeEngine(Protocol):
    """What the serving layer needs from an engine. Logits are float32[V] / float32[B, V]."""

    max_batch: int
    context_length: int
    vocab_size: int

    def add(self, prompt_ids: Sequence[int], bits: int) -> tuple[int, torch.Tensor]:
        """Prefill `prompt_ids` at `bits`; returns (slot, logits of the last prompt token)."""

    def step(self, slots: Sequence[int], tokens: Sequence[int], bits: Sequence[int]) -> torch.Tensor:
        """Append tokens[i] to slots[i] and run one decode step at bits[i]; returns [B, V]."""

    def length(self, slot: int) -> int:
        """Tokens held in `slot`'s cache (prompt + appended)."""

    def release(self, slot: int) -> None:
        """Free `slot` and its cache."""


class SlotPool:
    """Up to `max_batch` live sequences by slot number: what every engine keeps per sequence."""

    def __init__(self, max_batch: int) -> None:
        self.max_batch = int(max_batch)
        self._slots: dict[int, Any] = {}

    def release(self, slot: int) -> None:
        self._slots.pop(slot, None)

    def _get(self, slot: int) -> Any:
        try:
            return self._slots[slot]
        except KeyError:
            raise EngineError(f"slot {slot} is not in use") from None

    def _free_slot(self) -> int:
        for slot in range(self.max_batch):
            if slot not in self._slots:
                return slot
        raise EngineError(f"all {self.max_batch} slots are in use; release one first")


class _Slot:
    __slots__ = ("cache", "length")

    def __init__(self, cache: Any, length: int) -> None:
        self.cache = cache
        self.length = length


class TransformersEngine(SlotPool):
    """One transformers forward per sequence, each under its own precision and KV cache.

    Works for every architecture `load_anyprec` serves; a batch of B sequences costs B
    forwards, so it is the correctness oracle and the fallback, not the fast path.
    """

    def __init__(self, apm: AnyPrecisionModel, max_batch: int = 16) -> None:
        config = apm.model.config
        super().__init__(max_batch)
        self.apm = apm
        self.context_length = int(getattr(config, "max_position_embeddings", 0) or getattr(config, "n_positions"))
        self.vocab_size = int(config.vocab_size)

    def add(self, prompt_ids: Sequence[int], bits: int) -> tuple[int, torch.Tensor]:
        if not prompt_ids:
            raise EngineError("the prompt is empty: give at least one token")
        if len(prompt_ids) >= self.context_length:
            raise EngineError(
                f"the prompt has {len(prompt_ids)} tokens; this model's context is {self.context_length}"
            )
        slot = self._free_slot()
        ids = torch.tensor([list(prompt_ids)], dtype=torch.long)
        with torch.inference_mode():
            out = self.apm(input_ids=ids, use_cache=True, logits_to_keep=1, precision=bits)
        self._slots[slot] = _Slot(out.cache, len(prompt_ids))
        return slot, out.logits[0, -1].float()

    def step(self, slots: Sequence[int], tokens: Sequence[int], bits: Sequence[int]) -> torch.Tensor:
        if not (len(slots) == len(tokens) == len(bits)):
            raise EngineError(f"step got {len(slots)} slots, {len(tokens)} tokens, {len(bits)} bit-widths")
        rows = []
        for slot, token, b in zip(slots, tokens, bits):
            state = self._get(slot)
            if state.length >= self.context_length:
                raise EngineError(f"slot {slot} is full: the context is {self.context_length} tokens")
            ids = torch.tensor([[int(token)]], dtype=torch.long)
            with torch.inference_mode():
                out = self.apm(input_ids=ids, cache=state.cache, use_cache=True, precision=b)
            state.cache = out.cache
            state.length += 1
            rows.append(out.logits[0, -1].float())
        return torch.stack(rows) if rows else torch.empty(0, self.vocab_size)

    def length(self, slot: int) -> int:
        return self._get(slot).length
