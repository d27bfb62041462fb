"""OpenAI-compatible request bodies, model ids and error bodies."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MODEL_SUFFIX = re.compile(r"^(\d+(?:\.\d+)?)bit$")


class ApiError(Exception):
    """A request the server answers with `status` and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Body(BaseModel):
    # Unknown OpenAI fields (user, logit_bias, ...) are accepted and ignored, as other servers do.
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: dict | None = None
    min_bits: int | None = Field(None, ge=1, le=8, description="anyprec: lowest precision :auto may pick")
    max_bits: int | None = Field(None, ge=1, le=8, description="anyprec: highest precision :auto may pick")
    latency_ms: float | None = Field(None, gt=0, description="anyprec: this request's latency target for :auto")
    ignore_eos: bool = Field(False, description="keep generating past end-of-sequence (as vLLM; for benchmarks)")

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported; send several requests for several choices")
        return n

    @property
    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        if len(stops) > 4:
            raise ApiError(400, f"stop has {len(stops)} strings; at most 4 are allowed", "stop", "invalid_value")
        return stops

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class CompletionBody(_Body):
    prompt: str | list[int]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[dict] | None = None

    def text(self) -> str:
        """The message's text (parts of type "text" joined for list content)."""
        if isinstance(self.content, list):
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatBody(_Body):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None


def parse_body(raw: bytes, model: type[_Body]) -> _Body:
    """JSON bytes -> a validated body; ApiError(400) naming the bad field otherwise."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiError(400, f"the request body is not valid JSON: {err}", None, "invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object", None, "invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise ApiError(400, f"{param}: {first['msg']}", param, "invalid_value") from None


@dataclass(frozen=True)
class ModelId:
    """A parsed `model` field: bits None means `:auto`; a fractional bits is a plan (4.5)."""

    bits: int | float | None


def bits_label(bits: int | float) -> str:
    """4 -> '4', 4.5 -> '4.5': the precision as model ids and headers spell it."""
    return f"{bits:g}"


def resolve_model(model: str, name: str, bits_available: list[int]) -> ModelId:
    """`<name>:<b>bit`, `<name>:<x.y>bit` (a plan between the held widths), `<name>:auto` or bare
    `<name>` (the highest precision held)."""
    base, _, suffix = model.partition(":")
    if base != name:
        raise ApiError(404, f"model {model!r} does not exist; this server serves {name!r} "
                            f"(see GET /v1/models)", "model", "model_not_found")
    if not suffix:
        return ModelId(max(bits_available))
    if suffix == "auto":
        return ModelId(None)
    match = MODEL_SUFFIX.match(suffix)
    if not match:
        raise ApiError(404, f"model {model!r} does not exist; use {name}:<b>bit, {name}:<x.y>bit or "
                            f"{name}:auto (see GET /v1/models)", "model", "model_not_found")
    value = float(match.group(1))
    if value.is_integer():
        if int(value) not in bits_available:
            raise ApiError(400, f"model {model!r}: the artifact holds {bits_available} bits, not {int(value)}",
                           "model", "precision_not_available")
        return ModelId(int(value))
    lo, hi = min(bits_available), max(bits_available)
    if not lo < value < hi:
        raise ApiError(400, f"model {model!r}: a fractional precision must lie between the held widths "
                            f"{lo} and {hi}", "model", "precision_not_available")
    return ModelId(value)


def model_ids(name: str, bits_available: list[int], plans: list[float] = (), named: list[str] = ()) -> list[str]:
    """Integer widths, the artifact's stored plans (average bits, then other targets by name), `:auto`."""
    return ([f"{name}:{b}bit" for b in bits_available] + [f"{name}:{bits_label(p)}bit" for p in plans]
            + [f"{name}:{n}" for n in named] + [f"{name}:auto"])
