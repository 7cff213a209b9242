"""What an HTTP handler sees: the ``Request``, the ``Response`` it answers through, and the
server's ``Limits`` (``dataplane.http.server`` runs the connections)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol

from dataplane.open_files import DEFAULT_MAX_CONNECTIONS, per_peer_cap
from dataplane.random_ids import token_hex
from dataplane.validation import is_correlation_id

REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
"""Each status's reason phrase, for the status line."""


class Connection(Protocol):
    """What a ``Response`` writes to: the server's connection."""

    @property
    def draining(self) -> bool:
        """The server is stopping: the answer closes the connection."""
        ...

    async def write(self, data: bytes, more: bool = False) -> None: ...


Headers = Sequence[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Limits:
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    max_body_bytes: int = 16 * 1024 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 15.0
    write_timeout: float = 30.0
    max_requests_per_connection: int = 10_000
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    """Open connections beyond this are answered 503 and closed at once: a flood of idle
    connections cannot take the node's file descriptors from the callers it serves."""
    max_connections_per_peer: int | None = None
    """Open connections from one client address beyond this are answered 503 and closed at
    once, so one address cannot take every place under ``max_connections`` (None:
    ``per_peer_cap``). Loopback addresses count like any other; unix-socket clients (a node's
    own workers) have no address and are not counted."""

    @property
    def per_peer(self) -> int:
        """The cap on one client address's open connections."""
        if self.max_connections_per_peer is not None:
            return self.max_connections_per_peer
        return per_peer_cap(self.max_connections)


@dataclass(slots=True)
class Request:
    method: str
    path: str
    """The path without the query string."""
    query: str
    headers: dict[str, str]
    """Lower-case names; a repeated header's values joined with ``, ``."""
    body: bytes
    peer_certificate: bytes | None = None
    """The TLS client certificate (PEM) when the connection presented a verified one."""
    peer_refusal: str | None = None
    """Why the connection is not trusted where the node requires client certificates."""

    def header(self, name: str) -> str:
        return self.headers.get(name, "")


def text(value: bytes) -> str:
    """Bytes of a request's head as text: UTF-8 when they are (how clients send non-ASCII
    today), else ISO-8859-1 (RFC 9110 5.5's obs-text), each byte one character. Read as
    ISO-8859-1 always, UTF-8 came out garbled ("rÃ©sumÃ©") in the messages that echo it, and
    in the values read (a task named in UTF-8 matched no policy's task)."""
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value.decode("latin-1")


def header_fields(raw: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
    """(lower-case name, value) pairs by name; a repeated header's values joined, in order."""
    headers = {name.decode("latin-1"): text(value) for name, value in raw}
    if len(headers) != len(raw):
        headers = {}
        for name, value in raw:
            key, text_ = name.decode("latin-1"), text(value)
            headers[key] = f"{headers[key]}, {text_}" if key in headers else text_
    return headers


def request_id(supplied: str) -> bytes:
    """The ``x-request-id`` of an answer that no pipeline gave one: the caller's own when it
    is one the pipeline would take (``dataplane.validation``), else a fresh one."""
    return supplied.encode() if supplied and is_correlation_id(supplied) else token_hex(16).encode()


class ClientGone(Exception):
    """The client closed the connection (or stopped reading) before the answer was written."""


Handler = Callable[[Request, "Response"], Awaitable[None]]
Screen = Callable[[Request], bool]
"""Whether a request waiting for ``100 Continue`` may send its body (given its headers, the
body empty): False when they already decide its answer (credentials refused)."""
ErrorBody = Callable[[int, str], bytes]
"""(HTTP status, message) -> the JSON body of an error the server answers itself."""


class Response:
    """How a handler answers; exactly one of ``send`` or ``start``...``end``."""

    def __init__(
        self, connection: Connection, keep_alive: bool, head: bool = False, chunkable: bool = True
    ) -> None:
        self._c = connection
        self.keep_alive = keep_alive
        self.started = False
        self.finished = False
        self._chunked = False
        self._chunkable = chunkable
        """False for an HTTP/1.0 request: its client does not know chunked framing (RFC 9112
        7: a server must not send it one), so a streamed answer is its bytes as they are,
        ended by closing the connection."""
        self._head_only = head
        """Answering a HEAD: the status and headers only. A body after them would be read by
        the client as the start of its next answer on the connection (RFC 9112 6.3)."""
        self.extra: Headers = ()
        """Headers added to whatever the handler answers (the door's ``x-request-id`` on the
        answers the pipeline does not make)."""

    def carry_request_id(self, supplied: str) -> None:
        """Give the answer an ``x-request-id`` (``request_id``) unless it carries one through
        ``extra`` already: for the answers no pipeline makes, which would have none."""
        if not self.extra:
            self.extra = ((b"x-request-id", request_id(supplied)),)

    def _head(self, status: int, headers: Headers, extra: bytes) -> bytes:
        reason = REASONS.get(status, b"Unknown")
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        lines.extend(b"%s: %s\r\n" % (name, value) for name, value in headers)
        if self.extra:
            lines.extend(b"%s: %s\r\n" % (name, value) for name, value in self.extra)
        lines.append(extra)
        lines.append(b"connection: keep-alive\r\n\r\n" if self.keep_alive else b"connection: close\r\n\r\n")
        return b"".join(lines)

    async def send(self, status: int, headers: Headers, body: bytes) -> None:
        """The whole answer at once."""
        if self.started:
            raise RuntimeError("response already started")
        self.started = self.finished = True
        self.keep_alive = self.keep_alive and not self._c.draining
        head = self._head(status, headers, b"content-length: %d\r\n" % len(body))
        await self._c.write(head if self._head_only else head + body)

    async def start(self, status: int, headers: Headers) -> None:
        """The status and headers of a chunked answer; ``write`` the chunks, then ``end``."""
        if self.started:
            raise RuntimeError("response already started")
        self.started, self._chunked = True, self._chunkable
        self.keep_alive = self.keep_alive and not self._c.draining and self._chunked
        await self._c.write(
            self._head(status, headers, b"transfer-encoding: chunked\r\n" if self._chunked else b""),
            more=True,
        )

    async def write(self, data: bytes, now: bool = False) -> None:
        """One chunk of the answer. Sent with what else the handler writes before the event
        loop comes round (one ``send()`` for a burst of chunks); ``now``: at once, with
        whatever is held before it (the first token, which the client is waiting for)."""
        if data and not self._head_only:
            await self._c.write(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data, more=not now)

    async def end(self) -> None:
        if not self.finished:
            self.finished = True
            if self._chunked and not self._head_only:
                await self._c.write(b"0\r\n\r\n")
