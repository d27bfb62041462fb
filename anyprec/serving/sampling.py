"""Per-request token sampling, incremental detokenization and stop-string matching.

Sampling runs on the scheduler thread once per token per sequence, so it is NumPy on one
core: torch's intra-op threads fight the engine's OpenMP threads for the same cores, which
cost milliseconds per token (docs/SERVING.md, "Server-loop overhead").
"""

from __future__ import annotations

import numpy as np
import torch

NUCLEUS_FIRST_K = 64  # candidates tried first for top_p; grown x8 until they hold the mass


def new_rng(seed: int | None) -> np.random.Generator:
    """A request's random stream: reproducible with a seed, fresh entropy without one."""
    return np.random.default_rng(seed)


def sample_token(logits: torch.Tensor | np.ndarray, temperature: float, top_p: float,
                 rng: np.random.Generator | None) -> int:
    """One token id from float32[V] logits: greedy at temperature 0, else nucleus sampling
    (the smallest set of most likely tokens whose probability reaches top_p)."""
    x = logits.numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
    if temperature <= 0.0:
        return int(x.argmax())
    weights = np.exp((x - x.max()) * np.float32(1.0 / temperature))
    if top_p >= 1.0:
        ids, cum = None, np.cumsum(weights, dtype=np.float64)
    else:
        ids, cum = _nucleus(weights, top_p)
    rng = rng if rng is not None else new_rng(None)
    pick = min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(cum) - 1)
    return pick if ids is None else int(ids[pick])


def _nucleus(weights: np.ndarray, top_p: float) -> tuple[np.ndarray, np.ndarray]:
    """(token ids most likely first, cumulative weights) of the top_p nucleus."""
    target = top_p * float(weights.sum(dtype=np.float64))
    k = min(NUCLEUS_FIRST_K, len(weights))
    while True:
        ids = np.argpartition(weights, len(weights) - k)[len(weights) - k:] if k < len(weights) else np.arange(k)
        ids = ids[np.argsort(-weights[ids], kind="stable")]
        cum = np.cumsum(weights[ids], dtype=np.float64)
        if cum[-1] >= target or k == len(weights):
            # Keep token i while the mass before it is below top_p (the first token always stays).
            keep = max(1, int(np.searchsorted(cum - weights[ids], target, side="left")))
            return ids[:keep], cum[:keep]
        k = min(k * 8, len(weights))


class TextStream:
    """The decoded text of a growing list of token ids, decoding only the last few per token.

    Decoding the whole list each token costs O(length) per token; instead the tokens since
    the last emitted text are re-decoded until they form whole characters (no trailing
    U+FFFD), and only then appended. Decoding a window that starts at an already-decoded
    token keeps the tokenizer's leading-space handling the same on both sides of the diff.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""
        self._prefix = 0  # window start: first token of the last committed piece
        self._read = 0  # tokens whose text is in self.text

    def add(self, token: int) -> str:
        """Append `token`; returns the text of whole characters so far."""
        self.ids.append(token)
        prev, new = self._window()
        if len(new) > len(prev) and not new.endswith("\ufffd"):
            self.text += new[len(prev):]
            self._prefix, self._read = self._read, len(self.ids)
        return self.text

    def final(self) -> str:
        """All the text, with a trailing unfinished character dropped (generation ended)."""
        prev, new = self._window()
        return self.text + new[len(prev):].rstrip("\ufffd") if len(new) > len(prev) else self.text

    def _window(self) -> tuple[str, str]:
        decode = self.tokenizer.decode
        return (decode(self.ids[self._prefix:self._read], skip_special_tokens=True),
                decode(self.ids[self._prefix:], skip_special_tokens=True))


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
