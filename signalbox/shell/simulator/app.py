"""The simulator's HTTP server: the OpenAI-compatible endpoints and the ``/_sim`` controls.

:class:`Simulator` admits each request (authentication, counters, simulated latency and
failures from the model's :class:`Behaviour`), then writes what ``answers.py`` computed
as JSON or as one SSE stream.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any, Self

from aiohttp import web

from signalbox.shell.simulator.answers import (
    EMBEDDING_DIMENSIONS,
    BadRequest,
    answer_to,
    count_tokens,
    embedding_for,
)
from signalbox.shell.simulator.behaviour import (
    ANY_MODEL,
    DEFAULT_MODELS,
    Behaviour,
    ModelState,
    ModelStats,
)

_JSON = "application/json"

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
        self._models: dict[str, ModelState] = {}
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

    def _state(self, model: str) -> ModelState:
        state = self._models.get(model)
        if state is None:
            behaviour = self._behaviours.get(model) or self._behaviours.get(ANY_MODEL) or Behaviour()
            state = self._models[model] = ModelState(behaviour)
        return state

    async def _admit(
        self, request: web.Request, kind: str
    ) -> tuple[dict[str, Any], ModelState] | web.Response:
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
    def _should_fail(state: ModelState) -> bool:
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
            answer = answer_to(body)
        except BadRequest as exc:
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
        dims = body.get("dimensions", EMBEDDING_DIMENSIONS)
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
