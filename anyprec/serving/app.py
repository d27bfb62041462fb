"""The FastAPI app: OpenAI-compatible completions and chat over one artifact, a precision per request."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from anyprec.config import ServingConfig
from anyprec.plans import Plan, load_plan_file
from anyprec.runtime import AnyPrecisionModel, load_anyprec
from anyprec.serving.engines import is_plan, make_engine
from anyprec.serving.metrics import ServerMetrics
from anyprec.serving.protocol import (
    ApiError,
    ChatBody,
    CompletionBody,
    _Body,
    bits_label,
    model_ids,
    parse_body,
    resolve_model,
)
from anyprec.serving.router import Router
from anyprec.serving.scheduler import Event, GenRequest, QueueFull, Scheduler

log = logging.getLogger(__name__)
DISCONNECT_POLL_S = 0.5


def model_name(apm: AnyPrecisionModel) -> str:
    """The served name: the base model's reference, last path component ('smollm2-135m')."""
    ref = str(apm.manifest.get("inputs", {}).get("base_model_ref") or "model")
    return Path(ref.rstrip("/")).name or "model"


def _eos_ids(apm: AnyPrecisionModel) -> set[int]:
    ids = {apm.tokenizer.eos_token_id}
    gen = getattr(apm.model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    ids.update(extra if isinstance(extra, list) else [extra])
    return {int(i) for i in ids if i is not None}


def stored_plans(apm: AnyPrecisionModel) -> list[float]:
    """Fractional average widths of the plans stored in the artifact that its loaded widths can run."""
    lo, hi = min(apm.bits_available), max(apm.bits_available)
    targets = apm.manifest.get("plans", {}).values()
    return sorted({float(t["avg_bits"]) for t in targets
                   if "avg_bits" in t and is_plan(t["avg_bits"]) and lo < float(t["avg_bits"]) < hi})


def named_plans(apm: AnyPrecisionModel, artifact_dir: str | Path | None) -> dict[str, Plan]:
    """Plans stored for another target than an average width (`anyprec plan --max-bytes N`), by
    file stem ('plan-max-bytes-N'): served as `<model>:<stem>`. Loaded once, at start."""
    if artifact_dir is None:
        return {}
    plans = {}
    for file, target in apm.manifest.get("plans", {}).items():
        if "avg_bits" not in target and file in apm.manifest["files"]:
            plan = load_plan_file(Path(artifact_dir) / file, apm.manifest, apm.bits_available)
            plans[Path(file).stem] = plan
    return plans


class ServerState:
    """Everything a request handler needs: the model, its scheduler, router and metrics."""

    def __init__(self, apm: AnyPrecisionModel, cfg: ServingConfig, engine, name: str,
                 artifact_dir: str | Path | None = None) -> None:
        self.apm, self.cfg, self.engine, self.name = apm, cfg, engine, name
        self.bits = apm.bits_available
        self.plans = stored_plans(apm)
        self.named = named_plans(apm, artifact_dir)
        self.metrics = ServerMetrics()
        self.router = Router(cfg.auto, self.bits)
        self.scheduler = Scheduler(engine, apm.tokenizer, _eos_ids(apm), self.metrics, cfg.max_queue,
                                   on_finish=self.router.record_latency)

    def prompt_ids(self, body: _Body) -> tuple[list[int], str]:
        """(token ids, text the router scores) of a completion or chat body."""
        tok = self.apm.tokenizer
        if isinstance(body, ChatBody):
            if not getattr(tok, "chat_template", None):
                raise ApiError(400, f"model {self.name!r} has no chat template in its tokenizer; "
                                    "use /v1/completions with a plain prompt", "messages", "chat_template_missing")
            messages = [{"role": m.role, "content": m.text()} for m in body.messages]
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return list(tok(text, add_special_tokens=False)["input_ids"]), text
        if isinstance(body.prompt, list):
            bad = [t for t in body.prompt if not 0 <= t < self.engine.vocab_size]
            if bad:
                raise ApiError(400, f"prompt token ids {bad[:5]} are outside the vocabulary "
                                    f"[0, {self.engine.vocab_size})", "prompt", "invalid_value")
            return list(body.prompt), tok.decode(body.prompt)
        return list(tok(body.prompt)["input_ids"]), body.prompt

    def max_tokens(self, body: _Body) -> int:
        wanted = getattr(body, "max_completion_tokens", None) or body.max_tokens
        limit = self.cfg.max_tokens_limit
        if wanted is None:
            return self.cfg.default_max_tokens
        if not 1 <= wanted <= limit:
            raise ApiError(400, f"max_tokens={wanted} is out of range: give 1..{limit} "
                                "(serving.max_tokens_limit)", "max_tokens", "invalid_value")
        return wanted

    def check_length(self, ids: list[int]) -> None:
        ctx = self.engine.context_length
        if not ids:
            raise ApiError(400, "the prompt is empty: give at least one token", "prompt", "invalid_value")
        if len(ids) >= ctx:
            raise ApiError(400, f"the prompt has {len(ids)} tokens; this model's context is {ctx} "
                                "(prompt + completion): shorten the prompt", "prompt", "context_length_exceeded")

    def plan_avg_bits(self, bits: float) -> float:
        """Resolve the plan for a fractional precision now (stored, or computed once and cached by
        the runtime) so a precision the artifact cannot plan is a 400, not a failed prefill."""
        try:
            with self.apm.precision(bits):
                return self.apm.current_plan.avg_bits
        except ValueError as err:  # ArtifactError too: no objective table to plan from
            raise ApiError(400, f"precision {bits_label(bits)}: {err}", "model", "precision_not_available") from None

    def named_plan(self, model: str) -> tuple[str, Plan] | None:
        """(suffix, Plan) when `model` names a stored plan (`<model>:plan-max-bytes-N`)."""
        base, _, suffix = model.partition(":")
        return (suffix, self.named[suffix]) if base == self.name and suffix in self.named else None

    def choose_bits(self, body: _Body, ids: list[int], text: str) -> tuple[int | float, dict | None]:
        wanted = resolve_model(body.model, self.name, self.bits).bits
        if wanted is not None:
            return wanted, ({"avg_bits": self.plan_avg_bits(wanted)} if is_plan(wanted) else None)
        lo, hi = body.min_bits, body.max_bits
        if not [b for b in self.bits if (lo is None or b >= lo) and (hi is None or b <= hi)]:
            raise ApiError(400, f"min_bits={lo}, max_bits={hi}: no precision the artifact holds "
                                f"({self.bits}) is in that range", "min_bits", "precision_not_available")
        choice = self.router.choose(text, len(ids), self.scheduler.waiting(), lo, hi, body.latency_ms)
        self.metrics.auto_choices.labels(str(choice.bits)).inc()
        return choice.bits, choice.as_dict()


def _sse(payload: Any) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


class _Call:
    """One accepted request on its way through the scheduler; `chat` picks the response shape."""

    def __init__(self, state: ServerState, body: _Body, chat: bool) -> None:
        self.state, self.body, self.chat = state, body, chat
        ids, text = state.prompt_ids(body)
        state.check_length(ids)
        max_tokens = state.max_tokens(body)
        stops = body.stops
        named = state.named_plan(body.model)
        if named is not None:
            self.bits, self.route = round(named[1].avg_bits, 3), {"avg_bits": named[1].avg_bits}
            self.model = f"{state.name}:{named[0]}"
        else:
            self.bits, self.route = state.choose_bits(body, ids, text)
            self.model = f"{state.name}:{bits_label(self.bits)}bit"
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self.gen = GenRequest(ids, self.bits, max_tokens, lambda ev: loop.call_soon_threadsafe(self.queue.put_nowait, ev),
                              body.temperature, body.top_p, body.seed, stops, body.ignore_eos,
                              plan=None if named is None else named[1])
        try:
            state.scheduler.submit(self.gen)
        except QueueFull as err:
            raise ApiError(429, str(err), None, "queue_full", "rate_limit_error") from None

    def headers(self) -> dict[str, str]:
        headers = {"x-anyprec-bits": bits_label(self.bits)}
        if self.route is not None and "avg_bits" in self.route:
            headers["x-anyprec-avg-bits"] = f"{self.route['avg_bits']:.3f}"
        elif self.route is not None:
            headers["x-anyprec-auto-score"] = f"{self.route['score']:.3f}"
        return headers

    def choice(self, text: str | None, finish: str | None, first: bool = False) -> dict:
        if not self.chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        if self.body.stream:
            delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                "finish_reason": finish}

    def envelope(self, choices: list[dict], usage: dict | None = None) -> dict:
        obj = ("chat.completion.chunk" if self.body.stream else "chat.completion") if self.chat else "text_completion"
        out = {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices}
        if usage is not None or not self.body.stream:
            out["usage"] = usage
        return out

    async def next_event(self, request: Request) -> Event | None:
        """The scheduler's next event; None (and the slot freed) once the client has gone."""
        while True:
            if not self.queue.empty():
                return self.queue.get_nowait()
            try:
                async with asyncio.timeout(DISCONNECT_POLL_S):
                    return await self.queue.get()
            except TimeoutError:
                if await request.is_disconnected():
                    self.gen.cancelled.set()
                    return None

    def ready(self, first: Event) -> Iterator[Event]:
        """`first`, then every event already queued behind it (one write for a burst of tokens)."""
        yield first
        while not self.queue.empty():
            yield self.queue.get_nowait()

    async def collect(self, request: Request) -> Response:
        parts: list[str] = []
        while (event := await self.next_event(request)) is not None:
            if event.kind == "text":
                parts.append(event.text)
            elif event.kind == "error":
                raise ApiError(500, event.text, None, "engine_error", "server_error")
            else:
                body = self.envelope([self.choice("".join(parts), event.finish_reason)], event.usage)
                return JSONResponse(body, headers=self.headers())
        return Response(status_code=499)

    def sse(self, event: Event) -> list[bytes]:
        """The server-sent events for one scheduler event ([DONE] after the last)."""
        if event.kind == "text":
            return [_sse(self.envelope([self.choice(event.text, None)]))]
        if event.kind == "error":
            return [_sse(ApiError(500, event.text, None, "engine_error", "server_error").body()), b"data: [DONE]\n\n"]
        out = [_sse(self.envelope([self.choice("", event.finish_reason)]))]
        if self.body.include_usage:
            out.append(_sse(self.envelope([], event.usage)))
        return [*out, b"data: [DONE]\n\n"]

    async def stream(self, request: Request) -> AsyncIterator[bytes]:
        done = False
        try:
            if self.chat:
                yield _sse(self.envelope([self.choice(None, None, first=True)]))
            while not done and (event := await self.next_event(request)) is not None:
                out: list[bytes] = []
                for ev in self.ready(event):
                    out += self.sse(ev)
                    if ev.kind != "text":
                        done = True
                        break
                yield b"".join(out)
        finally:
            if not done:
                # The client went away mid-stream: free its slot at the next step.
                self.gen.cancelled.set()


def _install_routes(app: FastAPI, state: ServerState) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        state.metrics.rejected.labels(err.code or str(err.status)).inc()
        log.info("%s %s -> %d %s: %s", request.method, request.url.path, err.status, err.code, err.message)
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        log.error("%s %s -> 500 %s: %s", request.method, request.url.path, type(err).__name__, err)
        return JSONResponse(ApiError(500, f"internal error: {type(err).__name__}: {err}", None, "internal_error",
                                     "server_error").body(), status_code=500)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": state.name, "bits": state.bits,
                "active": state.scheduler.active(), "waiting": state.scheduler.waiting()}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    @app.get("/v1/models")
    async def models() -> dict:
        created = int(time.time())
        return {"object": "list", "data": [{"id": m, "object": "model", "created": created, "owned_by": "anyprec"}
                                           for m in model_ids(state.name, state.bits, state.plans, list(state.named))]}

    async def _generate(request: Request, body_type: type[_Body], chat: bool) -> Response:
        body = parse_body(await request.body(), body_type)
        call = _Call(state, body, chat)
        if body.stream:
            return StreamingResponse(call.stream(request), media_type="text/event-stream", headers=call.headers())
        return await call.collect(request)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _generate(request, CompletionBody, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _generate(request, ChatBody, chat=True)


def create_app(artifact_dir: str | Path | None = None, *, apm: AnyPrecisionModel | None = None,
               serving: ServingConfig | None = None, engine: str = "auto", name: str | None = None) -> FastAPI:
    """The server for one artifact (loaded from `artifact_dir` unless `apm` is given).

    The scheduler thread starts with the app's lifespan and stops with it."""
    if apm is None:
        if artifact_dir is None:
            raise ValueError("create_app needs an artifact directory or a loaded model (apm=)")
        apm = load_anyprec(artifact_dir)
    cfg = serving or ServingConfig()
    state = ServerState(apm, cfg, make_engine(apm, engine, cfg.max_batch, cfg.acts), name or model_name(apm), artifact_dir)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.scheduler.start()
        try:
            yield
        finally:
            state.scheduler.stop()

    app = FastAPI(title="anyprec", lifespan=lifespan)
    app.state.anyprec = state
    _install_routes(app, state)
    return app
