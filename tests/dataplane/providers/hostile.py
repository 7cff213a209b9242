"""A hostile provider: a real HTTP server on ``127.0.0.1`` that speaks one provider type's wire
format and turns what it is sent against the node.

``HostileUpstream(type_name)`` answers like that provider type (OpenAI-compatible,
OpenAI, Azure OpenAI, Anthropic, Mistral, Gemini, Ollama, simulated), and what it
does is chosen by the upstream model named in the request (the ``model`` body field,
Gemini's ``/models/NAME:...`` path, Azure's ``/openai/deployments/NAME/...``), the
way the simulator's behaviours are chosen per model. Every error it sends echoes the
credential the node authenticated with (read from the request's auth header) in
``ECHO_FORMS``: plain, upper- and lower-case, masked ``sk-XXXX...YYYY``, base64,
base64url, inside a base64 Basic/Bearer header value, split by invisible and control
characters; and it carries ``MARKER`` and a forged log line, in the message, the
code/type/status tokens and (Gemini) the details.

Behaviours (``BEHAVIOURS`` lists the ones every adapter is driven through):

- ``echo-<status>``: that HTTP status with the provider's error body, echoing;
- ``huge-<status>``: the same with multi-MiB message and code fields;
- ``not-found``: HTTP 404, the provider's "model not found" body, echoing;
- ``in-band``: HTTP 200 whose body (or whose stream's first event) is an error, echoing;
- ``mid-stream``: a stream that sends one text delta, then an in-band error, echoing;
- ``garbage``: HTTP 200 with a body that is not the provider's format, echoing;
- ``deep-json``: HTTP 200 whose body (or whose stream's first event) is JSON nested 20 000
  levels deep around the echo, 40 kB: past the interpreter's recursion limit;
- ``huge-event``: a stream whose first event is a 2 MiB line that never ends;
- ``negative-usage``: the ``ok`` answer, but claiming -1000000 input tokens;
- ``lone-surrogate``: the ``ok`` answer, with ``"Hel\\ud800lo!"`` (valid JSON, not Unicode) for
  its text;
- ``ok``: the provider's normal "Hello!" answer (plain or streamed);
- ``retry-after-<seconds>``: HTTP 429 with that ``Retry-After`` (e.g. a year);
- ``slow-<ms>``: wait that long, then answer ``ok``.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from .fakes import HANG, FakeUpstream, Reply, json_reply, ndjson_line, sse_event
from .test_cross_provider import WIRES, Wire

MARKER = "HOSTILE-UPSTREAM-TEXT"
"""In every hostile answer; must never reach a caller or an evidence record."""
FORGED_LOG_LINE = "\r\n2026-01-01 00:00:00 CRITICAL forged: node compromised\x1b[2J"

BEHAVIOURS = (
    "echo-400",
    "echo-401",
    "echo-429",
    "echo-500",
    "huge-500",
    "not-found",
    "in-band",
    "garbage",
    "deep-json",
    "negative-usage",
)
STREAM_ONLY_BEHAVIOURS = ("mid-stream", "huge-event")
SERVED_BEHAVIOURS = ("lone-surrogate",)
"""Odd answers that are still answers: served, not refused."""

_WIRES: Mapping[str, Wire] = {w.type_name: w for w in WIRES}
_INPUT_TOKENS = {
    "anthropic": b'"input_tokens": 12',
    "gemini": b'"promptTokenCount": 12',
    "ollama": b'"prompt_eval_count": 12',
}
"""How each type's canned answers say their 12 input tokens (the OpenAI family: ``prompt_tokens``)."""
_OPENAI_FAMILY = frozenset({"openai", "openai_compatible", "simulated", "azure_openai"})


def echo_forms(credential: str) -> dict[str, str]:
    """What a hostile upstream makes of the node's credential."""
    raw = credential.encode()
    return {
        "plain": credential,
        "upper": credential.upper(),
        "lower": credential.lower(),
        "masked": f"{credential[:7]}...{credential[-4:]}",
        "masked-stars": f"{credential[:3]}****************{credential[-4:]}",
        "base64": base64.b64encode(raw).decode(),
        "base64url": base64.urlsafe_b64encode(raw).decode().rstrip("="),
        "basic-auth": base64.b64encode(b"api:" + raw).decode(),
        "bearer-base64": base64.b64encode(b"Bearer " + raw).decode(),
        "zero-width": credential[:6] + "\u200b" + credential[6:],
        "control": credential[:8] + "\x00\x07" + credential[8:],
    }


def echo_text(credential: str) -> str:
    forms = " | ".join(f"{name}={form}" for name, form in echo_forms(credential).items())
    return f"{MARKER}: your key is {forms}{FORGED_LOG_LINE}"


def _credential_of(request: web.Request) -> str:
    headers = request.headers
    for name in ("x-api-key", "x-goog-api-key", "api-key"):
        if headers.get(name):
            return headers[name]
    return headers.get("authorization", "").removeprefix("Bearer ").strip()


class HostileUpstream(FakeUpstream):
    """One provider type's wire format, every answer chosen by the requested model's name."""

    def __init__(self, type_name: str) -> None:
        super().__init__()
        assert type_name in _WIRES, f"no wire format for provider type {type_name!r}"
        self.type_name = type_name
        self.wire = _WIRES[type_name]
        self.calls: dict[str, int] = {}
        """Requests per behaviour (upstream model)."""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        recorded = await self.record(request)
        body: Any = json.loads(recorded.body) if recorded.body else {}
        model, streaming = self._model_and_streaming(request.path, body)
        self.calls[model] = self.calls.get(model, 0) + 1
        credential = _credential_of(request)
        if model.startswith("slow-"):
            await asyncio.sleep(int(model.removeprefix("slow-")) / 1000)
            model = "ok"
        return await self.send(request, self.reply(model, streaming, credential))

    def _model_and_streaming(self, path: str, body: Any) -> tuple[str, bool]:
        if self.type_name == "gemini":  # /v1beta/models/NAME:generateContent
            name, _, method = path.rsplit("/", 1)[-1].partition(":")
            return name, method == "streamGenerateContent"
        if self.type_name == "azure_openai":  # /openai/deployments/NAME/chat/completions
            parts = path.split("/")
            return parts[parts.index("deployments") + 1], bool(body.get("stream"))
        streaming = body.get("stream", self.type_name == "ollama")  # Ollama streams by default
        return str(body.get("model", "")), bool(streaming)

    # -- answers -------------------------------------------------------------------------------

    def reply(self, behaviour: str, streaming: bool, credential: str) -> Reply:
        text = echo_text(credential)
        code = f"{MARKER}-code-{credential}"
        kind, _, arg = behaviour.partition("-")
        if behaviour == "ok":
            return (
                self.wire.stream_reply(*self.wire.text_stream(["Hello!"])) if streaming else self.wire.text()
            )
        if behaviour == "not-found":
            return json_reply(self.error_body(404, f"{text} (model not found)", code), 404)
        if behaviour == "huge-event":
            line = b"data: " if self.type_name != "ollama" else b'{"message": "'
            return self.stream(line, *(b"x" * (256 * 1024),) * 8, HANG)
        if kind == "echo":
            return json_reply(self.error_body(int(arg), text, code), int(arg))
        if kind == "huge":
            huge = self.error_body(int(arg), text * (4 * 1024 * 1024 // len(text)), code * 2000)
            return json_reply(huge, int(arg))
        if behaviour == "in-band":
            payload = self.error_body(None, text, code)
            return self.stream(self.in_band_event(payload)) if streaming else json_reply(payload)
        if behaviour == "mid-stream":
            frames = self.wire.text_stream(["Hel", "lo!"])
            cut = next(i for i, frame in enumerate(frames) if b"Hel" in frame) + 1
            return self.stream(*frames[:cut], self.in_band_event(self.error_body(None, text, code)))
        if behaviour == "garbage":
            return Reply(body=(f"<html>{text}</html>".encode(),), content_type="application/json")
        if behaviour == "negative-usage":
            field = _INPUT_TOKENS.get(self.type_name, b'"prompt_tokens": 12')
            negative = field.replace(b"12", b"-1000000")
            if streaming:
                frames = self.wire.text_stream(["Hello!"])
                return self.stream(*(frame.replace(field, negative) for frame in frames))
            return Reply(body=(bytes(self.wire.text().body[0]).replace(field, negative),))  # type: ignore[arg-type]
        if behaviour == "lone-surrogate":
            if streaming:
                frames = self.wire.text_stream(["Hello!"])
                return self.stream(*(frame.replace(b"Hello!", b"Hel\\ud800lo!") for frame in frames))
            return Reply(body=(bytes(self.wire.text().body[0]).replace(b"Hello!", b"Hel\\ud800lo!"),))  # type: ignore[arg-type]
        if behaviour == "deep-json":
            deep = "[" * 20_000 + json.dumps(text) + "]" * 20_000
            return self.stream(self.in_band_event(deep)) if streaming else Reply(body=(deep.encode(),))
        if kind == "retry" and behaviour.startswith("retry-after-"):
            seconds = behaviour.removeprefix("retry-after-")
            body = self.error_body(429, text, code)
            return json_reply(body, 429, {"Retry-After": seconds, "retry-after-ms": str(int(seconds) * 1000)})
        return json_reply({"error": {"message": f"hostile upstream: unknown behaviour {behaviour!r}"}}, 599)

    def stream(self, *steps: Any) -> Reply:
        return self.wire.stream_reply(*steps)

    def in_band_event(self, payload: Mapping[str, Any] | str) -> bytes:
        """One stream event carrying ``payload`` (a ``str`` is sent as the JSON text it is)."""
        if self.type_name == "ollama":
            return payload.encode() + b"\n" if isinstance(payload, str) else ndjson_line(payload)
        if self.type_name == "anthropic":
            return sse_event(payload, event="error")
        return sse_event(payload)

    def error_body(self, status: int | None, text: str, code: str) -> dict[str, Any]:
        """This provider type's documented error object, every field hostile."""
        make: Callable[[], dict[str, Any]]
        if self.type_name in _OPENAI_FAMILY:

            def make() -> dict[str, Any]:
                return {"error": {"message": text, "type": code, "param": code, "code": code}}

        elif self.type_name == "mistral":

            def make() -> dict[str, Any]:
                return {"object": "error", "message": text, "type": code, "param": None, "code": code}

        elif self.type_name == "anthropic":

            def make() -> dict[str, Any]:
                return {"type": "error", "error": {"type": code, "message": text}, "request_id": code}

        elif self.type_name == "gemini":

            def make() -> dict[str, Any]:
                info = {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": code,
                    "domain": text,
                    "metadata": {"key": code},
                }
                return {"error": {"code": status or 500, "message": text, "status": code, "details": [info]}}

        else:  # ollama

            def make() -> dict[str, Any]:
                return {"error": text}

        return make()
