"""The pooled client: origins, connection pools, request heads, TLS."""

from __future__ import annotations

import asyncio
import base64
import codecs
import contextlib
import re
import ssl
from collections import deque
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlencode, urlsplit

import certifi

from .connection import Connection, Exchange
from .errors import (
    ConnectError,
    ConnectTimeout,
    DecodingError,
    LocalProtocolError,
    PoolTimeout,
    TransportError,
    UnsupportedProtocol,
)

Origin = tuple[str, str, int]
"""(scheme, host, port): connections are pooled per origin."""

TRACE_HEADERS: ContextVar[bytes] = ContextVar("signalbox_upstream_trace_headers", default=b"")
"""Encoded headers (``traceparent``, ``tracestate``) the current upstream attempt sends: set by
``pipeline.tracing`` around a traced attempt; empty (and free) when tracing is off."""

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""An HTTP token (RFC 9110), matched whole: "$" would also match before a trailing newline."""
_BAD_VALUE = re.compile(r"[\r\n\x00]")
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?"
_TARGET_CACHE = 1024
"""Distinct (method, URL, params) heads kept; adapters use a handful each."""
_LARGE_BODY = 64 * 1024
"""A body this large is written after the head instead of being joined to it (no copy)."""
_COMMON_HEADERS = b"User-Agent: signalbox\r\nAccept: */*\r\nAccept-Encoding: identity\r\n"
"""Sent on every request. ``identity`` only: this client decodes no content coding."""


def default_ssl_context() -> ssl.SSLContext:
    """The trust every upstream call gets: certifi's CA bundle (as httpx's default), HTTP/1.1 by ALPN.

    The environment is not consulted (no ``SSL_CERT_FILE``, no proxies), as
    the node's client never did (``trust_env=False``).
    """
    context = ssl.create_default_context(cafile=certifi.where())
    context.set_alpn_protocols(["http/1.1"])
    return context


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """Headers as request-head bytes, checked once (an adapter encodes its fixed headers once).

    A value with CR, LF or NUL would let it forge headers: refused, naming
    only the header (its value may be a credential).
    """
    lines = []
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name):
            raise LocalProtocolError(f"header name {name!r} is not a valid HTTP token")
        if _BAD_VALUE.search(value):
            raise LocalProtocolError(f"header {name!r} has a value with a line break or NUL")
        lines.append(f"{name}: {value}\r\n".encode())
    return b"".join(lines)


def content_coded(headers: Mapping[str, str]) -> bool:
    """Whether the body is content-coded (gzip, br, ...): bytes this client does not decode."""
    coding = headers.get("content-encoding")
    return coding is not None and coding.strip().lower() != "identity"


def text_encoding(headers: Mapping[str, str]) -> str:
    """The body's text encoding: the ``charset`` of its Content-Type when Python knows it as one
    that decodes any bytes safely (``_decodes_safely``), else UTF-8."""
    content_type = headers.get("content-type", "")
    if "charset" not in content_type.lower():
        return "utf-8"
    found = _ENCODINGS.get(content_type)
    if found is None:
        found = "utf-8"
        for param in content_type.split(";")[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "charset":
                with contextlib.suppress(LookupError):
                    name = codecs.lookup(value.strip().strip("\"'")).name
                    if _decodes_safely(name):
                        found = name
        if len(_ENCODINGS) < 64:
            _ENCODINGS[content_type] = found
    return found


_ENCODINGS: dict[str, str] = {}

_PROBE = b"+2AA-\\ud800" + bytes(range(256))
"""Bytes no text encoding an answer may name turns into an exception or into a lone surrogate."""


def _decodes_safely(name: str) -> bool:
    """Whether the codec ``name`` decodes any bytes, piece by piece, to text every encoder takes.

    Python knows codecs that are not text encodings (``base64``, ``zlib``, ``rot13``: decoding
    raises), that refuse ``errors="replace"`` (``idna``), that cannot start without a BOM piece
    by piece (``utf-16``), or that make lone surrogates (``utf-7``, ``unicode_escape``), which no
    UTF-8 encoder (protobuf, the HTTP door's JSON) can write. Named by an upstream, each ended
    its request INTERNAL instead of as the upstream's failure. Any exception is a "no": codecs
    raise what they like.
    """
    try:
        codecs.getincrementaldecoder(name)(errors="replace").decode(_PROBE, final=True).encode("utf-8")
    except Exception:
        return False
    return True


@dataclass(frozen=True, slots=True)
class _Target:
    origin: Origin
    head: bytes
    """Request line, Host and the common headers."""
    basic_auth: bytes = b""
    """An ``Authorization`` line from credentials in the URL, which replace the adapter's own."""


class UpstreamResponse:
    """An answer whose head has arrived; the body is read with ``read`` or iterated in chunks.

    ``close`` when done: a body not read to its end takes its connection down
    (the upstream sees the disconnect), a finished one has already gone back
    to the pool.
    """

    __slots__ = ("_exchange", "_timeout", "headers", "status")

    def __init__(self, exchange: Exchange, timeout: float) -> None:
        self._exchange = exchange
        self._timeout = timeout
        self.status = exchange.status
        self.headers: Mapping[str, str] = exchange.headers
        """Names lower-cased; a repeated header's values joined with ``", "``."""

    async def read(self, limit: int) -> tuple[bytes, bool]:
        """The body up to ``limit`` bytes, and whether there was more (then it is not read further)."""
        next_chunk, timeout = self._exchange.next_chunk, self._timeout
        body = await next_chunk(timeout)
        if body is None:
            return b"", False
        if len(body) > limit:
            return body[:limit], True
        more = await next_chunk(timeout)
        if more is None:
            return body, False  # the common answer: whole, in the same read as its head
        buffer = bytearray(body)
        while more is not None:
            buffer += more
            if len(buffer) > limit:
                return bytes(buffer[:limit]), True
            more = await next_chunk(timeout)
        return bytes(buffer), False

    def __aiter__(self) -> UpstreamResponse:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._exchange.next_chunk(self._timeout)
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    def close(self) -> None:
        self._exchange.close()


class UpstreamClient:
    """Keep-alive HTTP/1.1 connections to every upstream origin, shared by all adapters of a node.

    Create it inside the event loop. ``max_connections`` bounds open
    connections over all origins, ``max_per_origin`` (by default half of
    that) those to any one origin (a request beyond either waits, up to its timeout, then fails with
    ``PoolTimeout``): an upstream that takes connections and never answers
    holds at most its own share, never the slots every other upstream needs.
    ``max_idle`` bounds the idle ones kept, each closed after
    ``idle_timeout`` seconds unused.
    """

    def __init__(
        self,
        *,
        max_connections: int = 512,
        max_per_origin: int | None = None,
        max_idle: int = 128,
        idle_timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._ssl = ssl_context if ssl_context is not None else default_ssl_context()
        self._max_connections = max_connections
        self._max_per_origin = max(1, max_connections // 2) if max_per_origin is None else max_per_origin
        self._by_origin: dict[Origin, int] = {}
        """Connections open or being opened, per origin."""
        self._max_idle = max_idle
        self._idle_timeout = idle_timeout
        self._idle: dict[Origin, deque[Connection]] = {}
        self._idle_count = 0
        self._open: set[Connection] = set()
        self._connecting = 0
        self._slot_waiters: dict[Origin, deque[asyncio.Future[None]]] = {}
        """Requests waiting for a connection, per origin, first come first served."""
        self._sweep: asyncio.TimerHandle | None = None
        self._targets: dict[tuple[str, str, object], _Target] = {}
        self._closed = False
        self._loop = asyncio.get_running_loop()
        """Kept, not asked for per request: on Python 3.11 ``asyncio.get_running_loop()``
        checks the process id, a system call each time (~2 us a call under load here)."""

    def clock(self) -> float:
        """The event loop's time, in which ``request``'s ``deadline`` is given."""
        return self._loop.time()

    @property
    def open_connections(self) -> int:
        return len(self._open)

    @property
    def idle_connections(self) -> int:
        return self._idle_count

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: bytes = b"",
        body: bytes = b"",
        timeout: float,
        deadline: float | None = None,
        params: Mapping[str, str] | None = None,
    ) -> UpstreamResponse:
        """Send one request and wait for its answer's head.

        ``headers`` are ``encode_headers`` bytes; ``timeout`` bounds the wait
        for a connection, connecting, and each wait for bytes; ``deadline``
        (loop time), if given, bounds them all together, reading the body
        included: the caller needs no timer of its own. Nothing is retried
        here, not even a request whose pooled connection closed before any
        byte of the answer: it was written, so the upstream may have run it,
        and a second send is the dispatch policy's to decide (an attempt of
        its own in the evidence), never a silent one.
        """
        if self._closed:
            raise TransportError("the upstream client is closed")
        target = self._target(method, url, params)
        if target.basic_auth:
            headers = _without_authorization(headers) + target.basic_auth
        head = b"%s%s%sContent-Length: %d\r\n\r\n" % (target.head, headers, TRACE_HEADERS.get(), len(body))
        joined = len(body) < _LARGE_BODY
        data = head + body if joined else head
        connection = self._take_idle(target.origin)
        if connection is None:
            left = timeout if deadline is None else min(timeout, deadline - self._loop.time())
            connection = await self._connect(target.origin, max(left, 0.0))
        exchange = connection.send(data, None if joined else body, deadline)
        try:
            await exchange.wait_headers(timeout)
        except BaseException:
            exchange.close()
            raise
        if exchange.status < 400 and content_coded(exchange.headers):
            # An error answer is returned all the same: its status and headers (Retry-After)
            # say what went wrong, whatever its body; ``content_coded`` tells its reader.
            exchange.close()
            raise DecodingError("upstream sent a content-coded body although only identity was accepted")
        return UpstreamResponse(exchange, timeout)

    async def __aenter__(self) -> UpstreamClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection, idle or busy; requests after this fail."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for connection in list(self._open):
            connection.abort()

    # -- pools ------------------------------------------------------------------------------

    def _take_idle(self, origin: Origin) -> Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        fresh_since = self._loop.time() - self._idle_timeout
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to be stale
            self._idle_count -= 1
            connection.idle = False
            if connection.idle_since > fresh_since and connection.usable():
                return connection
            connection.abort()
        return None

    def _reusable(self, connection: Connection) -> None:
        if self._closed or self._idle_count >= self._max_idle:
            connection.abort()
            return
        loop = self._loop
        self._idle.setdefault(connection.origin, deque()).append(connection)
        self._idle_count += 1
        connection.idle = True
        connection.idle_since = loop.time()
        if self._sweep is None:
            # One timer for every idle connection, not one per connection per request.
            self._sweep = loop.call_later(self._idle_timeout, self._close_expired)
        self._wake(connection.origin)

    def _close_expired(self) -> None:
        """Close the connections idle for ``idle_timeout``; come back when the next one will be."""
        self._sweep = None
        loop = self._loop
        expired_since = loop.time() - self._idle_timeout
        oldest: float | None = None
        for idle in list(self._idle.values()):
            while idle and idle[0].idle_since <= expired_since:
                idle[0].abort()  # the oldest first; abort takes it out of the pool
            if idle and (oldest is None or idle[0].idle_since < oldest):
                oldest = idle[0].idle_since
        if oldest is not None:
            self._sweep = loop.call_at(oldest + self._idle_timeout, self._close_expired)

    def _closed_connection(self, connection: Connection) -> None:
        if connection in self._open:
            self._open.discard(connection)
            self._release(connection.origin)
        if connection.idle:
            connection.idle = False
            self._idle_count -= 1
            idle = self._idle.get(connection.origin)
            if idle is not None:
                idle.remove(connection)
        self._wake(connection.origin)

    def _release(self, origin: Origin) -> None:
        left = self._by_origin[origin] - 1
        if left:
            self._by_origin[origin] = left
        else:
            del self._by_origin[origin]

    def _origin_full(self, origin: Origin) -> bool:
        return self._by_origin.get(origin, 0) >= self._max_per_origin

    def _wake(self, origin: Origin) -> None:
        """A connection to ``origin`` came free (idle or closed): wake one request that can use
        it, one for the same origin first, else one whose origin is under its own cap."""
        if self._wake_first(origin):
            return
        for other in list(self._slot_waiters):
            if other != origin and not self._origin_full(other) and self._wake_first(other):
                return

    def _wake_first(self, origin: Origin) -> bool:
        waiters = self._slot_waiters.get(origin)
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return True
        self._slot_waiters.pop(origin, None)
        return False

    def _evict_idle(self, origin: Origin) -> bool:
        if self._origin_full(origin):
            return False  # its own idle ones were taken first: only one of its busy ones frees a slot
        for idle in self._idle.values():
            if idle:
                idle[0].abort()  # the oldest
                return True
        return False

    async def _connect(self, origin: Origin, timeout: float) -> Connection:
        loop = self._loop
        while self._origin_full(origin) or len(self._open) + self._connecting >= self._max_connections:
            if self._evict_idle(origin):
                continue
            waiter = loop.create_future()
            waiters = self._slot_waiters.setdefault(origin, deque())
            waiters.append(waiter)
            try:
                async with asyncio.timeout(timeout):
                    await waiter
            except TimeoutError:
                raise PoolTimeout("no upstream connection came free within the timeout") from None
            finally:
                if not waiter.done():
                    waiter.cancel()
                    with contextlib.suppress(ValueError):
                        waiters.remove(waiter)  # or a stalled origin's waiters pile up
            if (found := self._take_idle(origin)) is not None:
                return found
        scheme, host, port = origin
        tls = scheme == "https"
        self._connecting += 1
        self._by_origin[origin] = self._by_origin.get(origin, 0) + 1
        opened = False
        try:
            async with asyncio.timeout(timeout):
                _, connection = await loop.create_connection(
                    lambda: Connection(self._reusable, self._closed_connection, origin),
                    host,
                    port,
                    ssl=self._ssl if tls else None,
                    server_hostname=host if tls else None,
                )
        except TimeoutError:
            raise ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:
            # The reason's class only: no URL path or query, nothing the request carried.
            raise ConnectError(f"could not connect to {host}:{port} ({type(exc).__name__})") from exc
        else:
            opened = not self._closed
        finally:
            self._connecting -= 1
            if not opened:
                self._release(origin)
                self._wake(origin)
        if not opened:
            connection.abort()
            raise TransportError("the upstream client is closed")
        self._open.add(connection)
        return connection

    # -- request heads ------------------------------------------------------------------------

    def _target(self, method: str, url: str, params: Mapping[str, str] | None) -> _Target:
        key = (method, url, tuple(params.items()) if params else None)
        found = self._targets.get(key)
        if found is None:
            found = _parse_target(method, url, params)
            if len(self._targets) >= _TARGET_CACHE:
                self._targets.clear()
            self._targets[key] = found
        return found


def _parse_target(method: str, url: str, params: Mapping[str, str] | None) -> _Target:
    """The origin and the fixed part of the request head for one URL (as httpx would send it)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsupportedProtocol("the upstream URL is malformed") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsupportedProtocol(f"the upstream URL's scheme must be http or https, not {scheme!r}")
    host = parts.hostname or ""
    if not host:
        raise UnsupportedProtocol("the upstream URL has no host")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise UnsupportedProtocol("the upstream URL's host is not a valid domain name") from None
    default_port = 443 if scheme == "https" else 80
    port = port or default_port
    host_header = f"[{host}]" if ":" in host else host
    if port != default_port:
        host_header = f"{host_header}:{port}"
    path = quote(parts.path or "/", safe=_PATH_SAFE)
    query = quote(parts.query, safe=_QUERY_SAFE)
    if params:
        query = f"{query}&{urlencode(params)}" if query else urlencode(params)
    target = f"{path}?{query}" if query else path
    if _BAD_VALUE.search(target) or " " in target:
        raise UnsupportedProtocol("the upstream URL cannot be sent")
    head = f"{method} {target} HTTP/1.1\r\nHost: {host_header}\r\n".encode("ascii") + _COMMON_HEADERS
    basic_auth = b""
    if parts.username is not None or parts.password is not None:
        # httpx sends credentials in the URL as Basic auth, in place of any Authorization header.
        pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}".encode()
        basic_auth = b"Authorization: Basic " + base64.b64encode(pair) + b"\r\n"
    return _Target(origin=(scheme, host, port), head=head, basic_auth=basic_auth)


def _without_authorization(headers: bytes) -> bytes:
    lines = headers.split(b"\r\n")
    return b"\r\n".join(line for line in lines if not line.lower().startswith(b"authorization:"))
