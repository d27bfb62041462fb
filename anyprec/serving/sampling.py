"""Per-request token sampling and stop-string matching over the decoded text."""

from __future__ import annotations

import torch


def sample_token(logits: torch.Tensor, temperature: float, top_p: float,
                 generator: torch.Generator | None) -> int:
    """One token id from float32[V] logits: greedy at temperature 0, else nucleus sampling."""
    if temperature <= 0.0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


class StopMatcher:
    """Turns the growing decoded text into safe-to-send deltas and spots stop strings.

    Text that could still become a stop string (a suffix equal to a stop string's prefix)
    or an unfinished UTF-8 character (a trailing U+FFFD) is held back until it resolves.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self._sent = 0
        self._text = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(delta to send, stop string hit) for the full decoded text so far."""
        self._text = text
        window_start = max(0, self._sent - max((len(s) for s in self.stops), default=0))
        hits = [i for i in (text.find(s, window_start) for s in self.stops) if i >= 0]
        if hits:
            end = max(self._sent, min(hits))
            delta, self._sent = text[self._sent:end], len(text)
            return delta, True
        safe = len(text) - self._held_back(text)
        if safe <= self._sent:
            return "", False
        delta, self._sent = text[self._sent:safe], safe
        return delta, False

    def flush(self) -> str:
        """Whatever was held back, at the end of generation."""
        delta, self._sent = self._text[self._sent:], len(self._text)
        return delta.rstrip("\ufffd")

    def _held_back(self, text: str) -> int:
        hold = len(text) - len(text.rstrip("\ufffd"))
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:k]):
                    hold = max(hold, k)
                    break
        return hold
