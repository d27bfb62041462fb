"""`anyprec bench serve DIR --clients N --seconds S`: a bounded load test against a loopback server.

N client threads send streaming completions back to back for S seconds (requests in flight
at the deadline finish; none start after it), cycling through a fixed prompt set and the
requested models. A sampler reads the server's `process_resident_memory_bytes` from
/metrics every second: peak RSS and whether memory stayed flat after warm-up.
The server is started in this process unless `--url` points at one on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from urllib.parse import urlparse

import httpx

from anyprec.fileio import write_json_atomic
from anyprec.serving.cli import MAX_CLIENTS, MAX_SECONDS

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
FLAT_SLACK_MIB, FLAT_SLACK_FRACTION = 32.0, 0.05
PROMPTS = (
    "The history of the city begins",
    "Write a python function that returns the sum of a list of numbers.",
    "Explain step by step why the sky is blue.",
    "Once upon a time",
    "Calculate how many minutes there are in 3 days, and explain your reasoning.",
    "The council met on Tuesday to discuss",
    "List three colours:",
    "Summarise the causes of the first world war because the exam is tomorrow.",
)


@dataclass
class Result:
    ok: bool
    latency_s: float
    ttft_s: float | None
    tokens: int
    bits: str


def loopback_url(url: str) -> str:
    """`url` unchanged when it names a loopback host; ValueError otherwise (this tool loads only local servers)."""
    host = urlparse(url).hostname or ""
    if host not in LOOPBACK_HOSTS:
        raise ValueError(f"--url {url}: the load test only targets 127.0.0.1 / localhost; "
                         "run it on the server's machine")
    return url.rstrip("/")


def one_request(client: httpx.Client, model: str, prompt: str, max_tokens: int, chat: bool = False,
                ignore_eos: bool = True) -> Result:
    """One streamed (chat) completion; time to first text chunk and to [DONE], tokens from `usage`."""
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0.7, "top_p": 0.95, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": ignore_eos,
            **({"messages": [{"role": "user", "content": prompt}]} if chat else {"prompt": prompt})}
    path = "/v1/chat/completions" if chat else "/v1/completions"
    start, ttft, tokens, done = time.perf_counter(), None, 0, False
    try:
        with client.stream("POST", path, json=body) as r:
            bits = r.headers.get("x-anyprec-bits", "?")
            if r.status_code != 200:
                r.read()
                return Result(False, time.perf_counter() - start, None, 0, bits)
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    break
                choice = chunk["choices"][0] if chunk.get("choices") else {}
                if ttft is None and (choice.get("text") or choice.get("delta", {}).get("content")):
                    ttft = time.perf_counter() - start
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    except httpx.HTTPError:
        return Result(False, time.perf_counter() - start, None, 0, "?")
    return Result(done, time.perf_counter() - start, ttft, tokens, bits)


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    if len(values) == 1:
        return {"p50": values[0], "p95": values[0], "p99": values[0]}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": q[49], "p95": q[94], "p99": q[98]}


def server_cpu_seconds(client: httpx.Client, url: str) -> float | None:
    """The server process's CPU-seconds so far (every thread), from its /metrics."""
    for line in client.get(url + "/metrics").text.splitlines():
        if line.startswith("process_cpu_seconds_total "):
            return float(line.split()[1])
    return None


class RssSampler(threading.Thread):
    """Reads the server's resident memory from /metrics once a second: [(seconds since start, bytes)]."""

    def __init__(self, url: str, period_s: float = 1.0) -> None:
        super().__init__(name="anyprec-rss", daemon=True)
        self.url, self.period_s = url, period_s
        self.samples: list[tuple[float, float]] = []
        self.stop_event = threading.Event()
        self.t0 = time.perf_counter()

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stop_event.is_set():
                try:
                    for line in client.get(self.url + "/metrics").text.splitlines():
                        if line.startswith("process_resident_memory_bytes "):
                            self.samples.append((time.perf_counter() - self.t0, float(line.split()[1])))
                except httpx.HTTPError:
                    pass
                self.stop_event.wait(self.period_s)


def memory_report(samples: list[tuple[float, float]], seconds: float) -> dict:
    """Peak RSS, and flat = RSS after warm-up (first quarter) grew by at most max(32 MiB, 5%)."""
    if not samples:
        return {"peak_rss_mib": None, "flat": None}
    mib = [(t, b / 2**20) for t, b in samples]
    warm = [m for t, m in mib if t >= seconds / 4] or [mib[-1][1]]
    growth = warm[-1] - warm[0]
    return {"peak_rss_mib": max(m for _, m in mib), "rss_after_warmup_mib": warm[0], "rss_end_mib": warm[-1],
            "rss_growth_mib": growth, "flat": growth <= max(FLAT_SLACK_MIB, FLAT_SLACK_FRACTION * warm[0])}


def run_load(url: str, models: list[str], clients: int, seconds: float, max_tokens: int, chat: bool = False,
             ignore_eos: bool = True) -> dict:
    """Drive `clients` threads for `seconds`; returns the summary dict (see module docstring).

    ignore_eos: every request generates exactly `max_tokens` (comparable runs, as vLLM's benchmark)."""
    results: list[Result] = []
    lock = threading.Lock()
    with httpx.Client(base_url=url, timeout=120) as warm:
        for model in models:  # first-call costs (plans, allocations) are not load
            one_request(warm, model, PROMPTS[0], 2, chat, ignore_eos)
        cpu0 = server_cpu_seconds(warm, url)
    sampler = RssSampler(url)
    sampler.start()
    t0 = time.perf_counter()
    deadline = t0 + seconds

    def client_loop(i: int) -> None:
        n = i  # each client walks the prompts (and models) from its own starting point
        with httpx.Client(base_url=url, timeout=600) as client:
            while time.perf_counter() < deadline:
                res = one_request(client, models[n % len(models)], PROMPTS[n % len(PROMPTS)], max_tokens, chat,
                                  ignore_eos)
                with lock:
                    results.append(res)
                n += 1

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    sampler.stop_event.set()
    sampler.join()
    with httpx.Client(timeout=30) as after:
        cpu1 = server_cpu_seconds(after, url)
    summary = summarize(results, wall, clients, models, max_tokens, memory_report(sampler.samples, seconds))
    cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    per_token = cpu / summary["completion_tokens"] * 1000.0 if cpu is not None and summary["completion_tokens"] else None
    return {**summary, "endpoint": "chat" if chat else "completions", "ignore_eos": ignore_eos,
            "server_cpu_s": cpu, "server_cpu_ms_per_token": per_token}


def summarize(results: list[Result], wall: float, clients: int, models: list[str], max_tokens: int,
              memory: dict) -> dict:
    ok = [r for r in results if r.ok]
    tokens = sum(r.tokens for r in ok)
    per_bits: dict[str, int] = {}
    for r in ok:
        per_bits[r.bits] = per_bits.get(r.bits, 0) + 1
    ms = lambda d: {k: (None if v is None else v * 1000.0) for k, v in d.items()}  # noqa: E731
    return {"clients": clients, "seconds": wall, "models": models, "max_tokens": max_tokens,
            "requests": len(results), "errors": len(results) - len(ok), "requests_per_s": len(ok) / wall,
            "completion_tokens": tokens, "tokens_per_s": tokens / wall,
            "latency_ms": ms(_percentiles([r.latency_s for r in ok])),
            "ttft_ms": ms(_percentiles([r.ttft_s for r in ok if r.ttft_s is not None])),
            "tpot_ms": ms(_percentiles([(r.latency_s - r.ttft_s) / (r.tokens - 1) for r in ok
                                        if r.ttft_s is not None and r.tokens > 1])),
            "requests_per_bits": dict(sorted(per_bits.items())), "memory": memory}


def format_summary(s: dict) -> str:
    f = lambda v: "-" if v is None else f"{v:,.0f}"  # noqa: E731
    mem = s["memory"]
    lines = [
        f"{s['clients']} clients, {s['seconds']:.1f} s, {s['endpoint']}, models {', '.join(s['models'])}, "
        f"max_tokens {s['max_tokens']}{' (ignore_eos)' if s['ignore_eos'] else ''}",
        f"requests {s['requests']}  errors {s['errors']}  req/s {s['requests_per_s']:.2f}  "
        f"tokens {s['completion_tokens']}  tok/s {s['tokens_per_s']:.1f}",
        "latency ms  p50 {p50}  p95 {p95}  p99 {p99}".format(**{k: f(v) for k, v in s["latency_ms"].items()}),
        "TTFT ms     p50 {p50}  p95 {p95}  p99 {p99}".format(**{k: f(v) for k, v in s["ttft_ms"].items()}),
        "per token after the first (TPOT) ms  p50 {p50}  p95 {p95}  p99 {p99}".format(
            **{k: "-" if v is None else f"{v:.1f}" for k, v in s["tpot_ms"].items()}),
        f"requests per bit-width {s['requests_per_bits']}",
        f"server CPU {f(s.get('server_cpu_s'))} s, "
        f"{'-' if s.get('server_cpu_ms_per_token') is None else format(s['server_cpu_ms_per_token'], '.1f')} ms "
        "per completion token (every thread: decode, sampling, HTTP)",
        f"server RSS peak {f(mem.get('peak_rss_mib'))} MiB, after warm-up {f(mem.get('rss_after_warmup_mib'))} MiB, "
        f"end {f(mem.get('rss_end_mib'))} MiB -> flat: {mem.get('flat')}",
    ]
    return "\n".join(lines)


def model_ids(name: str, models: list[str]) -> list[str]:
    """'auto' / '5bit' / '5' -> '<name>:auto' / '<name>:5bit'."""
    return [f"{name}:{m}" if m == "auto" or m.endswith("bit") else f"{name}:{m}bit" for m in models]


def run_bench_serve(args: argparse.Namespace) -> int:
    if not 1 <= args.clients <= MAX_CLIENTS or not 0 < args.seconds <= MAX_SECONDS:
        raise ValueError(f"--clients {args.clients} --seconds {args.seconds}: give 1..{MAX_CLIENTS} clients "
                         f"and 1..{MAX_SECONDS} seconds")
    if args.url:
        server, url = nullcontext(), loopback_url(args.url)
    else:
        from anyprec.serving.app import create_app
        from anyprec.serving.cli import serving_config
        from anyprec.serving.threaded import ThreadedServer

        server = ThreadedServer(create_app(args.dir, serving=serving_config(args.params), engine=args.engine))
        url = server.url
    with server:
        name = httpx.get(url + "/health", timeout=30).json()["model"]
        summary = run_load(url, model_ids(name, args.models), args.clients, args.seconds, args.max_tokens,
                           args.chat, not args.stop_at_eos)
    summary["server"] = "in-process" if not args.url else url
    print(format_summary(summary))
    if args.json:
        write_json_atomic(args.json, summary)
        print(f"wrote {args.json}")
    return 1 if summary["errors"] else 0

