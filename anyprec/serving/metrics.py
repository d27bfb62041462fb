"""Prometheus metrics of one server: a registry per app, so several apps in a process stay apart."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
RATE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class ServerMetrics:
    """Requests, tokens, latency / time-to-first-token / tok/s histograms per precision, queue, auto."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # process_resident_memory_bytes: what the load test's flat-memory check reads.
        ProcessCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter("anyprec_requests", "finished requests", ["bits", "status"], registry=r)
        self.rejected = Counter("anyprec_rejected_requests", "requests answered 4xx/5xx before decoding",
                                ["code"], registry=r)
        self.tokens = Counter("anyprec_tokens", "tokens processed", ["bits", "kind"], registry=r)
        self.latency = Histogram("anyprec_request_latency_seconds", "request latency (arrival to last token)",
                                 ["bits"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("anyprec_time_to_first_token_seconds", "arrival to first generated token",
                              ["bits"], buckets=LATENCY_BUCKETS, registry=r)
        self.rate = Histogram("anyprec_decode_tokens_per_second", "completion tokens / decode seconds, per request",
                              ["bits"], buckets=RATE_BUCKETS, registry=r)
        self.queue_depth = Gauge("anyprec_queue_depth", "requests waiting for a slot", registry=r)
        self.active = Gauge("anyprec_active_sequences", "sequences in the decode batch", registry=r)
        self.auto_choices = Counter("anyprec_auto_choices", "bit-widths chosen for :auto requests",
                                    ["bits"], registry=r)

    def finished(self, bits: int | float, status: str, prompt_tokens: int, completion_tokens: int,
                 latency_s: float, ttft_s: float | None, decode_s: float) -> None:
        """Record one request that reached the engine (status: stop, length, cancelled, error)."""
        b = str(bits)
        self.requests.labels(b, status).inc()
        self.tokens.labels(b, "prompt").inc(prompt_tokens)
        self.tokens.labels(b, "completion").inc(completion_tokens)
        self.latency.labels(b).observe(latency_s)
        if ttft_s is not None:
            self.ttft.labels(b).observe(ttft_s)
        if completion_tokens > 1 and decode_s > 0:
            self.rate.labels(b).observe((completion_tokens - 1) / decode_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
