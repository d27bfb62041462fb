"""The `:auto` precision router: a difficulty score per prompt, a bit drop under load, client limits.

Every decision is explainable from three numbers the router returns with it: the prompt's
difficulty score in [0, 1] (length share + task-cue share), the bits dropped for load
(waiting requests, recent p95 latency over the target) and the client's [min_bits, max_bits].
"""

from __future__ import annotations

import re
import threading
from collections import deque
from dataclasses import asdict, dataclass

from anyprec.config import RouterConfig


@dataclass(frozen=True)
class Choice:
    """One routing decision: the bit-width and why."""

    bits: int
    score: float
    cues: tuple[str, ...]
    load_drop: int
    recent_p95_ms: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def _cue_pattern(words: list[str]) -> re.Pattern:
    """Whole-word match for words ("sum" must not fire on "summer"), plain match for symbols."""
    parts = []
    for word in words:
        w = word.lower()
        left = r"\b" if w[:1].isalnum() else ""
        right = r"\b" if w[-1:].isalnum() else ""
        parts.append(left + re.escape(w) + right)
    return re.compile("|".join(parts))


class Router:
    """Picks bits for `:auto` requests; thread-safe (the app routes, the scheduler reports latency)."""

    def __init__(self, cfg: RouterConfig, bits_available: list[int]) -> None:
        self.cfg = cfg
        self.bits_available = sorted(bits_available)
        self._cues = {name: _cue_pattern(words) for name, words in cfg.cues.items() if words}
        self._latencies: deque[float] = deque(maxlen=cfg.latency_window)
        self._lock = threading.Lock()

    def difficulty(self, text: str, n_tokens: int) -> tuple[float, tuple[str, ...]]:
        """Score in [0, 1]: length_weight * min(1, tokens / long_prompt_tokens) + cue_weight * cue share."""
        lowered = text.lower()
        found = tuple(name for name, pattern in self._cues.items() if pattern.search(lowered))
        cue_share = len(found) / len(self._cues) if self._cues else 0.0
        length_share = min(1.0, n_tokens / self.cfg.long_prompt_tokens)
        score = self.cfg.length_weight * length_share + self.cfg.cue_weight * cue_share
        return min(1.0, score), found

    def record_latency(self, seconds: float) -> None:
        """A finished request's latency (any precision): the load signal's second half."""
        with self._lock:
            self._latencies.append(seconds * 1000.0)

    def recent_p95_ms(self) -> float | None:
        with self._lock:
            window = sorted(self._latencies)
        if not window:
            return None
        return window[min(len(window) - 1, int(0.95 * len(window)))]

    def choose(self, text: str, n_tokens: int, waiting: int, min_bits: int | None = None,
               max_bits: int | None = None, latency_ms: float | None = None) -> Choice:
        """Bits for one request: difficulty maps linearly onto [cfg.min_bits, cfg.max_bits], minus
        one bit per `queue_per_bit` waiting requests and one more while the recent p95 is over the
        target (`latency_ms` from the client replaces `p95_ms`), clamped to the client's limits and
        rounded to a bit-width the artifact holds."""
        score, cues = self.difficulty(text, n_tokens)
        lo, hi = self.cfg.min_bits, self.cfg.max_bits
        wanted = lo + round(score * (hi - lo))
        p95 = self.recent_p95_ms()
        target = latency_ms if latency_ms is not None else self.cfg.p95_ms
        drop = waiting // self.cfg.queue_per_bit + (1 if p95 is not None and p95 > target else 0)
        bits = max(lo, wanted - drop)
        bits = max(min_bits or 0, min(max_bits or 99, bits))
        return Choice(self._held(bits, min_bits, max_bits), score, cues, drop, p95)

    def _held(self, bits: int, min_bits: int | None, max_bits: int | None) -> int:
        """The nearest bit-width the artifact holds, inside the client's limits when any is."""
        allowed = [b for b in self.bits_available
                   if (min_bits is None or b >= min_bits) and (max_bits is None or b <= max_bits)]
        candidates = allowed or self.bits_available
        return min(candidates, key=lambda b: (abs(b - bits), b))
