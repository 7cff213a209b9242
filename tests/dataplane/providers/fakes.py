"""Real HTTP servers on ``127.0.0.1`` that answer like a provider, for adapter and end-to-end tests.

A ``FakeUpstream`` answers every request with the next queued ``Reply``
(FIFO) and records what it was sent::

    async with FakeUpstream() as upstream:
        upstream.enqueue(json_reply({"choices": [...]}))
        ...  # point an adapter at upstream.base_url
        assert upstream.last.json["model"] == "gpt-x"

A reply body is a script: ``bytes`` are written and flushed one item at a
time (so streams really arrive in pieces), ``Wait(event)`` pauses until the
test sets the event, ``HANG`` keeps the connection open until the client
leaves, and ``ABORT`` drops the connection mid-body. ``disconnects`` counts
replies whose client went away before the body was complete, which is how
tests observe that closing an adapter's stream closed the upstream call.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    """Header names lower-cased."""
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class Wait:
    """Pause the body here until ``event`` is set."""

    event: asyncio.Event


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


HANG = _Marker("HANG")
"""Stop writing and keep the connection open until the client disconnects."""
ABORT = _Marker("ABORT")
"""Drop the TCP connection without finishing the body."""

Step = bytes | Wait | _Marker


@dataclass(frozen=True, slots=True)
class Reply:
    """One canned answer. A body of only ``bytes`` is sent whole, with a Content-Length."""

    status: int = 200
    body: Sequence[Step] = ()
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def scripted(self) -> bool:
        return len(self.body) > 1 or any(not isinstance(s, bytes) for s in self.body)


def json_reply(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Reply:
    return Reply(status=status, body=(json.dumps(payload).encode(),), headers=headers or {})


def raw_reply(
    text: str,
    status: int = 200,
    content_type: str = "application/json",
    headers: Mapping[str, str] | None = None,
) -> Reply:
    return Reply(status=status, body=(text.encode(),), content_type=content_type, headers=headers or {})


def sse_event(data: Any, event: str | None = None) -> bytes:
    """One SSE frame; ``data`` that is not a string is JSON-encoded."""
    text = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n".encode()


def sse_reply(*steps: Step, status: int = 200, headers: Mapping[str, str] | None = None) -> Reply:
    return Reply(status=status, body=steps, content_type="text/event-stream", headers=headers or {})


def ndjson_line(obj: Any) -> bytes:
    return (json.dumps(obj) + "\n").encode()


def ndjson_reply(*steps: Step, status: int = 200) -> Reply:
    return Reply(status=status, body=steps, content_type="application/x-ndjson")


def closed_port_url() -> str:
    """A URL on which nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class FakeUpstream:
    """An aiohttp server on an ephemeral port replaying queued replies."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.disconnects = 0
        self._replies: deque[Reply] = deque()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # Cancelling the handler when the client leaves is how a disconnect becomes visible.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        self._port = 0

    async def start(self) -> FakeUpstream:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self._port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def __aenter__(self) -> FakeUpstream:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def last(self) -> RecordedRequest:
        assert self.requests, "the fake upstream received no request"
        return self.requests[-1]

    def enqueue(self, *replies: Reply) -> None:
        self._replies.extend(replies)

    async def record(self, request: web.Request) -> RecordedRequest:
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=await request.read(),
        )
        self.requests.append(recorded)
        return recorded

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await self.record(request)
        if not self._replies:
            return web.json_response({"error": {"message": "fake upstream: no reply queued"}}, status=599)
        return await self.send(request, self._replies.popleft())

    async def send(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        """Play ``reply`` to ``request``: whole, or step by step when it is scripted."""
        if not reply.scripted:
            return web.Response(
                status=reply.status,
                body=b"".join(s for s in reply.body if isinstance(s, bytes)),
                headers={"Content-Type": reply.content_type, **reply.headers},
            )
        response = web.StreamResponse(
            status=reply.status, headers={"Content-Type": reply.content_type, **reply.headers}
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            for step in reply.body:
                if isinstance(step, bytes):
                    await response.write(step)
                elif isinstance(step, Wait):
                    await step.event.wait()
                elif step is HANG:
                    await asyncio.Event().wait()
                elif step is ABORT:
                    assert request.transport is not None
                    request.transport.abort()
                    return response
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            self.disconnects += 1
            raise
        return response
