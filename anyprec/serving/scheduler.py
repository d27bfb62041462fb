"""Continuous batching: one thread owns the engine; requests join and leave between decode steps.

Each loop iteration admits waiting requests into free slots (prefill, first token), drops
cancelled ones, then runs one `engine.step` over every live sequence, each at its own
precision, and samples each request's next token with its own temperature / top_p / seed.
Results reach the caller through `GenRequest.sink(event)`, called from this thread.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from anyprec.engine import DecodeEngine, EngineError
from anyprec.serving.metrics import ServerMetrics
from anyprec.serving.sampling import StopMatcher, TextStream, new_rng, sample_token

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """More requests wait for a slot than the server accepts."""


@dataclass(frozen=True)
class Event:
    """kind: "text" (delta), "done" (finish_reason, usage) or "error" (message)."""

    kind: str
    text: str = ""
    finish_reason: str | None = None
    usage: dict | None = None


@dataclass
class GenRequest:
    """One generation: the prompt's token ids, a bit-width and the sampling settings."""

    prompt_ids: list[int]
    bits: int | float  # a fractional width runs as a plan (see engines.make_engine)
    max_tokens: int
    sink: Callable[[Event], None]
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)
    arrival: float = field(default_factory=time.perf_counter)
    slot: int | None = None
    generated: list[int] = field(default_factory=list)
    first_token_at: float | None = None
    rng: np.random.Generator | None = None
    matcher: StopMatcher | None = None
    text: TextStream | None = None
    plan: Any = None  # a stored Plan to run instead of `bits` (then its average width)

    @property
    def precision(self) -> Any:
        """What the engine runs: the plan if one was named, else `bits`."""
        return self.bits if self.plan is None else self.plan


class Scheduler:
    """Owns `engine`; `submit` from any thread, `start` / `stop` the decode thread."""

    def __init__(self, engine: DecodeEngine, tokenizer, eos_ids: set[int], metrics: ServerMetrics,
                 max_queue: int = 256, on_finish: Callable[[float], None] | None = None) -> None:
        self.engine = engine
        # The app thread tokenizes prompts while this one decodes: a fast tokenizer is not
        # safe to share across threads, so the decode thread keeps its own copy.
        self.tokenizer = copy.deepcopy(tokenizer)
        self.eos_ids = eos_ids
        self.metrics = metrics
        self.max_queue = max_queue
        self.on_finish = on_finish
        self._waiting: deque[GenRequest] = deque()
        self._active: list[GenRequest] = []
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="anyprec-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout=30)

    def submit(self, req: GenRequest) -> None:
        with self._cv:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting (serving.max_queue); retry later")
            self._waiting.append(req)
            self.metrics.queue_depth.set(len(self._waiting))
            self._cv.notify()

    def waiting(self) -> int:
        """Requests not yet holding a slot."""
        return len(self._waiting)

    def active(self) -> int:
        return len(self._active)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and not self._waiting and not self._active:
                    self._cv.wait()
                if self._stopping:
                    break
            try:
                self._admit()
                self._drop_cancelled()
                if self._active:
                    self._step()
            except Exception:  # noqa: BLE001 - a bug here must fail its requests, not the server
                log.exception("scheduler iteration failed; failing the %d active requests", len(self._active))
                for req in list(self._active):
                    self._fail(req, "internal error in the scheduler")
        for req in [*self._active, *self._waiting]:
            self._fail(req, "the server is shutting down")

    def _admit(self) -> None:
        while len(self._active) < self.engine.max_batch:
            with self._cv:
                if not self._waiting:
                    break
                req = self._waiting.popleft()
                self.metrics.queue_depth.set(len(self._waiting))
            if req.cancelled.is_set():
                self._finish(req, "cancelled")
                continue
            try:
                req.slot, logits = self.engine.add(req.prompt_ids, req.precision)
            except EngineError as err:
                self._fail(req, str(err))
                continue
            except Exception as err:  # noqa: BLE001 - one bad prefill must not take the server down
                log.error("prefill failed (%d tokens, %s bits): %s: %s", len(req.prompt_ids), req.bits,
                          type(err).__name__, err)
                self._fail(req, f"prefill failed: {err}")
                continue
            req.rng = new_rng(req.seed)
            req.matcher = StopMatcher(req.stop)
            req.text = TextStream(self.tokenizer)
            self._active.append(req)
            self._advance(req, logits)
        self.metrics.active.set(len(self._active))

    def _drop_cancelled(self) -> None:
        for req in [r for r in self._active if r.cancelled.is_set()]:
            self._finish(req, "cancelled")

    def _step(self) -> None:
        batch = list(self._active)
        try:
            logits = self.engine.step([r.slot for r in batch], [r.generated[-1] for r in batch],
                                      [r.precision for r in batch])
        except Exception as err:  # noqa: BLE001 - one bad step must not take the server down
            log.error("decode step failed for %d sequences: %s: %s", len(batch), type(err).__name__, err)
            for req in batch:
                self._fail(req, f"decode failed: {err}")
            return
        for req, row in zip(batch, logits):
            self._advance(req, row)

    def _advance(self, req: GenRequest, logits: torch.Tensor) -> None:
        """Sample one token for `req`, send its text, and finish it when a limit is reached."""
        token = sample_token(logits, req.temperature, req.top_p, req.rng)
        if req.first_token_at is None:
            req.first_token_at = time.perf_counter()
        if token in self.eos_ids and not req.ignore_eos:
            self._send_rest(req)
            self._finish(req, "stop", counted=len(req.generated) + 1)
            return
        req.generated.append(token)
        delta, hit = req.matcher.feed(req.text.add(token))
        self._send(req, delta)
        if hit:
            self._finish(req, "stop")
        elif len(req.generated) >= req.max_tokens or self.engine.length(req.slot) >= self.engine.context_length:
            self._finish(req, "stop" if self._send_rest(req) else "length")

    def _send_rest(self, req: GenRequest) -> bool:
        """Send the text still held back at the end of generation; True if it held a stop string."""
        delta, hit = req.matcher.feed(req.text.final())
        self._send(req, delta if hit else delta + req.matcher.flush())
        return hit

    def _send(self, req: GenRequest, text: str) -> None:
        if text:
            self._deliver(req, Event("text", text=text))

    def _deliver(self, req: GenRequest, event: Event) -> None:
        try:
            req.sink(event)
        except RuntimeError:
            # The client's event loop is gone (it disconnected); nothing is waiting for this.
            req.cancelled.set()

    def _release(self, req: GenRequest) -> None:
        if req in self._active:
            self._active.remove(req)
        if req.slot is not None:
            self.engine.release(req.slot)
            req.slot = None
        self.metrics.active.set(len(self._active))

    def _finish(self, req: GenRequest, reason: str, counted: int | None = None) -> None:
        self._release(req)
        now = time.perf_counter()
        completion = counted if counted is not None else len(req.generated)
        usage = {"prompt_tokens": len(req.prompt_ids), "completion_tokens": completion,
                 "total_tokens": len(req.prompt_ids) + completion}
        ttft = None if req.first_token_at is None else req.first_token_at - req.arrival
        decode_s = 0.0 if req.first_token_at is None else now - req.first_token_at
        self.metrics.finished(req.bits, reason, len(req.prompt_ids), completion, now - req.arrival, ttft, decode_s)
        if reason != "cancelled":
            if self.on_finish is not None:
                self.on_finish(now - req.arrival)
            self._deliver(req, Event("done", finish_reason=reason, usage=usage))

    def _fail(self, req: GenRequest, message: str) -> None:
        self._release(req)
        self.metrics.requests.labels(str(req.bits), "error").inc()
        self._deliver(req, Event("error", text=message))
