"""The built-in simulated upstream: a real HTTP server speaking the OpenAI wire format.

It is the ``simulated`` provider of ``signalbox up``, the upstream of the
benchmarks, and the failing provider of retry and circuit-breaker tests, so it is:

- exact about the wire format: ``POST /v1/chat/completions`` (JSON, or SSE when
  ``stream`` is true, with a usage chunk only when ``stream_options.include_usage``),
  tool calls, ``POST /v1/embeddings`` (``float`` and ``base64``), ``GET /v1/models``;
- deterministic: the answer echoes the last user message, tool arguments are derived
  from the tool's JSON Schema, embeddings from a hash of the input, so tests can
  assert exact values;
- fast: one JSON parse and one write per request, no per-request logging;
- controllable: a :class:`Behaviour` per model (failures, ``Retry-After``, latency)
  set at start or at run time through ``POST /_sim/behaviour``, and per-model
  counters at ``GET /_sim/stats`` so tests can assert who received what.

Control endpoints (JSON bodies)::

    POST /_sim/behaviour  {"model": "m" | "*", "fail_status": 500, "fail_rate": 1.0,
                           "fail_times": 2, "retry_after": 2, "latency_ms": 50,
                           "chunk_delay_ms": 0, "drop_after_chunks": 3, "error_body": {...}}
    GET  /_sim/stats      {"total": n, "models": {"m": {"chat": .., "stream": ..,
                           "embeddings": .., "failed": .., "last_request": {...}}}}
    POST /_sim/reset      behaviours back to the start-up ones, counters to zero
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import math
import signal
import struct
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Self

from aiohttp import web

from signalbox import settings

DEFAULT_MODELS = ("sim-fast", "sim-smart", "sim-embed")
"""Models listed by ``GET /v1/models`` even before anyone asked for them."""

ANY_MODEL = "*"
"""Behaviour key that applies to every model without its own behaviour."""

_JSON = "application/json"
_EMBEDDING_DIMENSIONS = 16

# OpenAI's error "type" for the statuses a provider typically returns; adapters
# classify on status first, but real clients also read this field.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout",
    429: "rate_limit_error",
}


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How the simulator treats requests for one model."""

    fail_status: int | None = None
    """HTTP status of a simulated failure; ``None`` never fails."""
    fail_rate: float = 1.0
    """Share of requests that fail when ``fail_status`` is set. Deterministic: with
    0.5 every second request fails, so tests never depend on chance."""
    fail_times: int | None = None
    """Fail only the next N requests (then succeed); ``None`` has no limit."""
    retry_after: float | None = None
    """Seconds sent in a ``Retry-After`` header with each failure."""
    latency_ms: float = 0.0
    """Delay before the response starts (time to first byte)."""
    chunk_delay_ms: float = 0.0
    """Delay between streamed chunks."""
    drop_after_chunks: int | None = None
    """Cut the connection after this many streamed chunks, with no ``[DONE]``: an upstream
    that dies mid-answer. ``None`` finishes every stream."""
    error_body: Any = None
    """JSON body of a failure; an OpenAI-style error object when ``None``."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Behaviour:
        """Build from a control-endpoint body, rejecting unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known - {"model"}
        if unknown:
            raise ValueError(f"unknown behaviour fields: {', '.join(sorted(unknown))}")
        values = {k: v for k, v in data.items() if k in known}
        behaviour = cls(**values)
        if behaviour.fail_status is not None and not 400 <= behaviour.fail_status <= 599:
            raise ValueError("fail_status must be an HTTP error status (400-599)")
        if not 0.0 <= behaviour.fail_rate <= 1.0:
            raise ValueError("fail_rate must be between 0 and 1")
        return behaviour


@dataclass(slots=True)
class ModelStats:
    """Requests one model received, by kind."""

    chat: int = 0
    stream: int = 0
    embeddings: int = 0
    failed: int = 0
    last_request: dict[str, Any] | None = field(default=None)
    """The body of the most recent request, as received."""

    @property
    def total(self) -> int:
        return self.chat + self.stream + self.embeddings


@dataclass(slots=True)
class _ModelState:
    behaviour: Behaviour
    stats: ModelStats = field(default_factory=ModelStats)
    # Requests seen under the current behaviour: drives fail_rate and fail_times.
    seen: int = 0
    failures: int = 0


class Simulator:
    """A running simulated upstream on ``host:port`` (port 0 picks a free one).

    Use as ``async with Simulator() as sim: ... sim.base_url`` or ``start()``/``stop()``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        behaviours: Mapping[str, Behaviour] | None = None,
        api_key: str | None = None,
        models: Sequence[str] = DEFAULT_MODELS,
    ) -> None:
        self._host = host
        self._port = port
        self._initial = dict(behaviours or {})
        self._api_key = api_key
        self._listed = tuple(models)
        self._models: dict[str, _ModelState] = {}
        self._behaviours: dict[str, Behaviour] = dict(self._initial)
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None
        self._counter = 0
        self._created = int(time.time())

    # ---- lifecycle ----

    @property
    def port(self) -> int:
        if self._bound_port is None:
            raise RuntimeError("simulator is not running")
        return self._bound_port

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT``; OpenAI clients want ``base_url + "/v1"``."""
        return f"http://{self._host}:{self.port}"

    def app(self) -> web.Application:
        """The aiohttp application, for embedding in another server."""
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._list_models)
        app.router.add_post("/_sim/behaviour", self._set_behaviour)
        app.router.add_get("/_sim/stats", self._get_stats)
        app.router.add_post("/_sim/reset", self._reset)
        return app

    async def start(self) -> None:
        # access_log=None: no per-request logging on the benchmark's hot path.
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, reuse_address=True)
        await site.start()
        self._runner = runner
        self._bound_port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- control (in-process equivalents of the /_sim endpoints) ----

    def set_behaviour(self, model: str, behaviour: Behaviour) -> None:
        """Replace ``model``'s behaviour (``"*"`` for every model without its own)."""
        self._behaviours[model] = behaviour
        for name, state in self._models.items():
            if name == model or (model == ANY_MODEL and name not in self._behaviours):
                state.behaviour, state.seen, state.failures = behaviour, 0, 0

    def stats(self, model: str) -> ModelStats:
        """Counters for ``model`` (zero if it was never asked for)."""
        state = self._models.get(model)
        return state.stats if state is not None else ModelStats()

    def reset(self) -> None:
        """Back to the start-up behaviours, all counters zero."""
        self._behaviours = dict(self._initial)
        self._models.clear()

    def stats_json(self) -> dict[str, Any]:
        models = {}
        for name, state in self._models.items():
            entry = asdict(state.stats)
            entry["total"] = state.stats.total
            models[name] = entry
        return {"total": sum(s.stats.total for s in self._models.values()), "models": models}

    # ---- request path ----

    def _state(self, model: str) -> _ModelState:
        state = self._models.get(model)
        if state is None:
            behaviour = self._behaviours.get(model) or self._behaviours.get(ANY_MODEL) or Behaviour()
            state = self._models[model] = _ModelState(behaviour)
        return state

    async def _admit(
        self, request: web.Request, kind: str
    ) -> tuple[dict[str, Any], _ModelState] | web.Response:
        """Parse, authenticate, count and maybe fail a request; the shared front of every endpoint."""
        if (denied := self._unauthorized(request)) is not None:
            return denied
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _error(400, "We could not parse the JSON body of your request.")
        if not isinstance(body, dict):
            return _error(400, "The request body must be a JSON object.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return _error(400, "you must provide a model parameter", param="model")
        state = self._state(model)
        stats = state.stats
        setattr(stats, kind, getattr(stats, kind) + 1)
        stats.last_request = body
        behaviour = state.behaviour
        if behaviour.latency_ms:
            await asyncio.sleep(behaviour.latency_ms / 1000)
        if behaviour.fail_status is not None and self._should_fail(state):
            stats.failed += 1
            return _failure(behaviour)
        return body, state

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if self._api_key is None or request.headers.get("Authorization") == f"Bearer {self._api_key}":
            return None
        return _error(401, "Incorrect API key provided.", code="invalid_api_key")

    @staticmethod
    def _should_fail(state: _ModelState) -> bool:
        behaviour = state.behaviour
        state.seen += 1
        if behaviour.fail_times is not None and state.failures >= behaviour.fail_times:
            return False
        # Fails exactly when the running count of failures due crosses an integer:
        # rate 0.5 fails requests 2, 4, 6 ...; rate 1.0 fails all of them.
        fail = math.floor(state.seen * behaviour.fail_rate) > math.floor(
            (state.seen - 1) * behaviour.fail_rate
        )
        if fail:
            state.failures += 1
        return fail

    def _next_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}-sim{self._counter:08d}"

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        stream = False
        try:
            admitted = await self._admit(request, "chat")
            if isinstance(admitted, web.Response):
                return admitted
            body, state = admitted
            stream = bool(body.get("stream"))
            if stream:
                # Recount: _admit counted it as a plain chat call before it knew.
                state.stats.chat -= 1
                state.stats.stream += 1
            answer = _answer(body)
        except _BadRequest as exc:
            return _error(400, str(exc), param=exc.param)
        completion_id = self._next_id("chatcmpl")
        created = int(time.time())
        if not stream:
            return web.json_response(answer.completion(completion_id, created, body["model"]))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunks = answer.chunks(completion_id, created, body["model"], include_usage)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
        )
        await response.prepare(request)
        behaviour = state.behaviour
        delay = behaviour.chunk_delay_ms / 1000
        if behaviour.drop_after_chunks is not None:
            for chunk in chunks[: behaviour.drop_after_chunks]:
                await response.write(_sse(chunk))
                if delay:
                    await asyncio.sleep(delay)
            state.stats.failed += 1
            # Abort, not close: the client must see a broken stream, not a clean end.
            if request.transport is not None:
                request.transport.abort()
            return response
        if delay:
            for chunk in chunks:
                await response.write(_sse(chunk))
                await asyncio.sleep(delay)
            await response.write(b"data: [DONE]\n\n")
        else:
            # One write: the whole stream in one segment is what keeps the bench upstream cheap.
            await response.write(b"".join(_sse(c) for c in chunks) + b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _embeddings(self, request: web.Request) -> web.Response:
        admitted = await self._admit(request, "embeddings")
        if isinstance(admitted, web.Response):
            return admitted
        body, _ = admitted
        raw = body.get("input")
        inputs: list[Any] = raw if isinstance(raw, list) else [raw]
        if not inputs or not all(isinstance(i, str) for i in inputs):
            return _error(400, "'input' must be a string or a non-empty array of strings", param="input")
        dims = body.get("dimensions", _EMBEDDING_DIMENSIONS)
        if not isinstance(dims, int) or not 1 <= dims <= 4096:
            return _error(400, "'dimensions' must be an integer between 1 and 4096", param="dimensions")
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            return _error(400, "'encoding_format' must be 'float' or 'base64'", param="encoding_format")
        data = []
        for index, text in enumerate(inputs):
            vector = embedding_for(text, dims)
            value: Any = (
                base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode() if fmt == "base64" else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": value})
        tokens = sum(count_tokens(t) for t in inputs)
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def _list_models(self, request: web.Request) -> web.Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        names = dict.fromkeys(
            [*self._listed, *(m for m in self._behaviours if m != ANY_MODEL), *self._models]
        )
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": n, "object": "model", "created": self._created, "owned_by": "signalbox-simulator"}
                    for n in names
                ],
            }
        )

    async def _set_behaviour(self, request: web.Request) -> web.Response:
        try:
            data = json.loads(await request.read())
            if not isinstance(data, dict) or not isinstance(data.get("model"), str):
                raise ValueError('body must be a JSON object with a "model" string')
            behaviour = Behaviour.from_json(data)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self.set_behaviour(data["model"], behaviour)
        return web.json_response({"model": data["model"], "behaviour": asdict(behaviour)})

    async def _get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats_json())

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"reset": True})


# ---- answers ----


class _BadRequest(ValueError):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class _Answer:
    """What the simulated model says: text or tool calls, with token counts."""

    text: str | None
    tool_calls: tuple[dict[str, Any], ...]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    def completion(self, completion_id: str, created: int, model: str) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.text, "refusal": None}
        if self.tool_calls:
            message["tool_calls"] = list(self.tool_calls)
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason}
            ],
            "usage": self.usage(),
            "system_fingerprint": "fp_signalbox_sim",
        }

    def chunks(
        self, completion_id: str, created: int, model: str, include_usage: bool
    ) -> list[dict[str, Any]]:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            out: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_signalbox_sim",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if include_usage:
                # OpenAI sends "usage": null on every chunk but the last when usage is asked for.
                out["usage"] = None
            return out

        out = [
            chunk({"role": "assistant", "content": "" if self.text is not None else None, "refusal": None})
        ]
        for piece in _pieces(self.text or ""):
            out.append(chunk({"content": piece}))
        for index, call in enumerate(self.tool_calls):
            function = call["function"]
            head = {"index": index, "id": call["id"], "type": "function"}
            out.append(
                chunk({"tool_calls": [{**head, "function": {"name": function["name"], "arguments": ""}}]})
            )
            for fragment in _fragments(function["arguments"]):
                out.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}))
        out.append(chunk({}, self.finish_reason))
        if include_usage:
            last = chunk({})
            last["choices"] = []
            last["usage"] = self.usage()
            out.append(last)
        return out


def _answer(body: Mapping[str, Any]) -> _Answer:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' must be a non-empty array", "messages")
    prompt_tokens = 3  # every reply is primed with <|start|>assistant<|message|>
    last_user = ""
    for message in messages:
        if not isinstance(message, dict) or "role" not in message:
            raise _BadRequest("each message must be an object with a 'role'", "messages")
        text = _text_of(message.get("content"))
        prompt_tokens += 3 + count_tokens(text)  # per-message framing, as OpenAI counts it
        if message["role"] == "user":
            last_user = text
    tools = body.get("tools") or []
    prompt_tokens += sum(count_tokens(json.dumps(t, separators=(",", ":"))) for t in tools)
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise _BadRequest("'max_tokens' must be a positive integer", "max_tokens")

    last = messages[-1]
    tool = _tool_to_call(tools, body.get("tool_choice"), last_user) if last.get("role") != "tool" else None
    if tool is not None:
        call_id = "call_" + hashlib.sha256(f"{tool['name']}:{last_user}".encode()).hexdigest()[:24]
        arguments = json.dumps(_arguments_for(tool.get("parameters") or {}, last_user), separators=(",", ":"))
        call = {"id": call_id, "type": "function", "function": {"name": tool["name"], "arguments": arguments}}
        return _Answer(None, (call,), "tool_calls", prompt_tokens, count_tokens(arguments) + 7)

    if last.get("role") == "tool":
        text = f"The tool returned: {_text_of(last.get('content'))}"
    else:
        text = f"Simulated answer to: {last_user}" if last_user else "Simulated answer."
    pieces = list(_pieces(text))
    finish = "stop"
    if limit is not None and len(pieces) > limit:
        pieces, finish = pieces[:limit], "length"
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    text = "".join(pieces)
    for s in stops:
        if s and s in text:
            text = text[: text.index(s)]
    return _Answer(text, (), finish, prompt_tokens, max(1, len(list(_pieces(text)))))


def _tool_to_call(tools: list[Any], choice: Any, prompt: str) -> dict[str, Any] | None:
    """The tool the simulated model calls, if any: what ``tool_choice`` demands, or,
    under ``auto``, a tool whose name the prompt mentions (or any, if it says "tool")."""
    functions: list[dict[str, Any]] = [
        t["function"] for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)
    ]
    if not functions or choice == "none":
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        for f in functions:
            if f.get("name") == name:
                return f
        raise _BadRequest(f"tool_choice names an unknown tool {name!r}", "tool_choice")
    if choice == "required":
        return functions[0]
    lowered = prompt.lower()
    for f in functions:
        if str(f.get("name", "")).lower() in lowered:
            return f
    return functions[0] if "tool" in lowered else None


def _arguments_for(schema: Mapping[str, Any], prompt: str) -> Any:
    """A deterministic value that satisfies a (simple) JSON Schema."""
    if schema.get("enum"):
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props: Mapping[str, Any] = schema.get("properties") or {}
        required = schema.get("required")
        names = required if isinstance(required, list) else list(props)
        return {n: _arguments_for(props.get(n) or {}, prompt) for n in names}
    return {
        "string": prompt[:64] or "simulated",
        "integer": 1,
        "number": 1.0,
        "boolean": True,
        "array": [],
        "null": None,
    }.get(kind, "simulated")


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise _BadRequest("message content must be a string or an array of parts", "messages")


def _pieces(text: str) -> Iterator[str]:
    """Split text into token-like pieces: words with their leading space, as BPE tokenizers do."""
    start = 0
    for i in range(1, len(text)):
        if text[i] == " " and text[i - 1] != " ":
            yield text[start:i]
            start = i
    if start < len(text):
        yield text[start:]


def _fragments(arguments: str, size: int = 12) -> Iterator[str]:
    for i in range(0, len(arguments), size):
        yield arguments[i : i + size]


def count_tokens(text: str) -> int:
    """A realistic token estimate: about four characters of English per token."""
    return (len(text) + 3) // 4


def embedding_for(text: str, dimensions: int = _EMBEDDING_DIMENSIONS) -> list[float]:
    """The simulator's unit-length embedding of ``text``: derived from SHA-256, so stable."""
    raw = b""
    counter = 0
    while len(raw) < dimensions * 4:
        raw += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    ints = struct.unpack(f"<{dimensions}i", raw[: dimensions * 4])
    norm = math.sqrt(sum(float(i) * i for i in ints)) or 1.0
    # Rounded through float32 so the float and base64 encodings carry the same numbers.
    return [struct.unpack("<f", struct.pack("<f", i / norm))[0] for i in ints]


def _sse(chunk: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def _error(status: int, message: str, *, param: str | None = None, code: str | None = None) -> web.Response:
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": param, "code": code}}, status=status
    )


def _failure(behaviour: Behaviour) -> web.Response:
    status = behaviour.fail_status or 500
    headers = {}
    if behaviour.retry_after is not None:
        value = behaviour.retry_after
        headers["Retry-After"] = str(int(value)) if float(value).is_integer() else str(value)
    if behaviour.error_body is not None:
        return web.json_response(behaviour.error_body, status=status, headers=headers)
    response = _error(status, f"Simulated failure ({status}).", code="simulated_failure")
    response.headers.update(headers)
    return response


# ---- CLI ----


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``signalbox simulator serve``."""
    parser = commands.add_parser("simulator", help="the built-in simulated OpenAI-compatible upstream")
    sub = parser.add_subparsers(dest="simulator_command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="serve the simulated upstream until SIGINT/SIGTERM")
    command = "simulator serve"
    settings.add(
        serve,
        "--listen",
        env="SIGNALBOX_SIMULATOR_LISTEN",
        default="127.0.0.1:7702",
        help="HOST:PORT to listen on (port 0 picks a free one)",
        command=command,
    )
    settings.add(
        serve,
        "--api-key",
        env="SIGNALBOX_SIMULATOR_API_KEY",
        help="require this bearer token on /v1 requests (none: accept any)",
        command=command,
    )
    settings.add(
        serve,
        "--behaviour",
        env="SIGNALBOX_SIMULATOR_BEHAVIOUR",
        help='start-up behaviours as JSON: {"MODEL or *": {"fail_status": 500, ...}}',
        command=command,
    )
    serve.set_defaults(handler=_serve_command)


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` → (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{value!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def _serve_command(ns: argparse.Namespace) -> int:
    host, port = parse_listen(ns.listen)
    behaviours: dict[str, Behaviour] = {}
    if ns.behaviour:
        for model, spec in json.loads(ns.behaviour).items():
            behaviours[model] = Behaviour.from_json(spec)
    simulator = Simulator(host, port, behaviours=behaviours, api_key=ns.api_key)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with simulator:
            # The bound address on stdout, so a parent that asked for port 0 learns it.
            print(f"simulator listening on {simulator.base_url}", flush=True)
            await stop.wait()

    asyncio.run(serve())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m signalbox.shell.simulator serve ...``: the simulator alone, without loading either plane."""
    parser = argparse.ArgumentParser(prog="signalbox")
    register(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args(["simulator", *(argv if argv is not None else sys.argv[1:])])
    handler: Any = ns.handler
    return int(handler(ns))


if __name__ == "__main__":
    sys.exit(main())
