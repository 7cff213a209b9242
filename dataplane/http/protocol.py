"""One HTTP/1.1 connection of ``dataplane.http.server``: the parser's callbacks, the
requests answered in order, the limits and timers of one connection (the server's module
docstring says what each one bounds and why)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections import deque
from collections.abc import Callable
from typing import Protocol

import httptools

from dataplane.http.framing import OTHER_VERSION, VERSIONS, check_head
from dataplane.http.messages import (
    REASONS,
    ClientGone,
    ErrorBody,
    Handler,
    Limits,
    Request,
    Response,
    Screen,
    header_fields,
    request_id,
    text,
)
from dataplane.peer_places import PeerPlaces, over_peer_cap
from dataplane.tls_front import NOT_THROUGH_FRONT, PeerLookup

log = logging.getLogger("signalbox.dataplane.http")

_UNSEEN = "authorization: the connection's TLS verdict was not looked up"
"""A connection behind the TLS front before its first request (never reaches a Request)."""


class Server(Protocol):
    """What a connection uses of its server (``dataplane.http.server.HttpServer``)."""

    handler: Handler
    screen: Screen | None
    peers: PeerLookup | None
    error_body: ErrorBody
    limits: Limits
    connections: set[HttpConnection]
    refused_connections: int
    peer_places: PeerPlaces
    in_flight: int
    idle: asyncio.Event


class HttpConnection(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self._server = server
        self._limits = server.limits
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._peer_certificate: bytes | None = None
        self._peer_host: str | None = None
        """The client address this connection counts against (``peer_places``)."""
        self._peer_refusal: str | None = None
        # The request being parsed.
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._head_received = 0
        """Bytes of the request's head received so far, whole lines or not (``_header_bytes``
        counts lines the parser has finished, which an unterminated line never is)."""
        self._head_began_here = False
        self._in_chunk_head = False
        """A chunk's size line was parsed and no byte of its data yet: for the last chunk,
        the trailer section (header lines, buffered by httptools as the head's are)."""
        self._body: list[bytes] = []
        self._body_size = 0
        self._in_message = False
        self._headers_done = False
        self._refused = False
        self._refusal_owed: tuple[int, str, int | None, bytes] | None = None
        """A pipelined request refused while an earlier one was being answered: written once
        the answers before it are."""
        self._continue_owed = False
        """The request being parsed asked for ``100 Continue`` while an earlier one was being
        answered: owed once that answer is done."""
        # Requests parsed and waiting (pipelining), and the one being handled.
        self._queue: deque[tuple[Request, bool, bool]] = deque()
        """(request, keep-alive, HTTP/1.1 or later)"""
        self._task: asyncio.Task[None] | None = None
        self._served = 0
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._on_deadline: Callable[[], None] | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._corked: list[bytes] = []
        """What ``write(..., more=True)`` holds until the loop's next turn."""
        self._corked_bytes = 0
        self._closed = False
        self.draining = False
        self._response: Response | None = None
        """The answer being made, while a handler runs."""
        self._answering_http11 = False
        self._read_closed = False
        """The client shut its side after whole requests (``eof_received``): they are
        answered, then the connection closes."""

    # ---- asyncio.Protocol ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._server.connections.add(self)
        if len(self._server.connections) > self._limits.max_connections:
            self._server.refused_connections += 1
            self._refuse(
                503,
                f"the node has {self._limits.max_connections} HTTP connections open, its limit "
                "(--http-max-connections); retry shortly",
                retry_after=1,
            )
            return
        if self._server.peers is None:  # behind a TLS front, the front counts addresses
            self._peer_host, within = self._server.peer_places.take(transport, self._limits.per_peer)
            if not within:
                self._server.refused_connections += 1
                self._refuse(503, over_peer_cap(self._limits.per_peer), retry_after=1)
                return
        ssl_object = transport.get_extra_info("ssl_object")
        if self._server.peers is not None:
            # Behind the TLS front: looked up with the first request (the front files its
            # verdict once connected, which may be after this runs).
            self._peer_refusal = _UNSEEN
        elif ssl_object is not None:
            der = ssl_object.getpeercert(binary_form=True)
            if der:
                self._peer_certificate = ssl.DER_cert_to_PEM_cert(der).encode()
        self._arm(self._limits.keepalive_timeout, self._idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._server.connections.discard(self)
        if self._peer_host is not None:
            self._server.peer_places.give(self._peer_host)
            self._peer_host = None
        self._server.idle.set()  # a drain waiting on this connection's request looks again
        self._disarm()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._writable.set()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        # The parser holds this connection's bound methods: a reference cycle, left for the
        # cyclic collector, which a serving worker runs seldom (``dataplane.collector``). No
        # byte is parsed after the connection is lost.
        del self._parser

    def _front_peer(self) -> None:
        """What the TLS front established, filed under this connection's port."""
        assert self._server.peers is not None
        assert self._transport is not None
        peername = self._transport.get_extra_info("peername")
        peer = self._server.peers(peername[0], peername[1]) if peername else NOT_THROUGH_FRONT
        self._peer_certificate, self._peer_refusal = peer.certificate, peer.refusal

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._in_message:
            self._in_message = True
            if self._task is None:  # else armed when the answer in progress is done
                self._arm(self._limits.header_timeout, self._slow_headers)
        self._head_began_here = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            if str(exc) == OTHER_VERSION:
                self._refuse(505, VERSIONS)
            elif not self._refused:
                self._refuse(400, f"malformed HTTP request ({_parser_problem(exc)})")
        if self._in_message and (not self._headers_done or self._in_chunk_head):
            # All of ``data`` is the head (or the trailers) still being received, unless
            # that began in it (then part may be what came before): not counted, so a head
            # is never over-counted, and at most one read beyond the limit is buffered.
            # httptools holds a header line until it ends; without this, one that never
            # ends grew by whatever arrived until the header or body timeout (tens of MB
            # a second).
            if not self._head_began_here:
                self._head_received += len(data)
            if max(self._header_bytes, self._head_received) > self._limits.max_header_bytes:
                self._refuse(431, f"request line and headers exceed {self._limits.max_header_bytes} bytes")

    def eof_received(self) -> bool | None:
        """The client is gone, or half-closed after its requests (``SHUT_WR``, which HTTP/1.1
        allows; such a client got no answer). Taken as gone unless whole HTTP/1.1 requests
        are being answered and the answer has not started: they are answered, then the
        connection closes. The client is first sent an interim ``103 Early Hints`` (which it
        must read past, RFC 9110 15.2): a closed socket answers it with a reset,
        ``_peer_check`` sees it, and the handler of a client that left is still cancelled
        before its answer. An answer under way (a stream) cannot carry one, nor may an
        HTTP/1.0 client be sent one (RFC 9110 15.2): an EOF then is a client gone. HTTP/1.0
        has no half-close; kept open for one, a client that left was seen only when its
        answer was written, its upstream call running (and paid for) until then."""
        response = self._response
        if self._in_message or self._task is None or self._transport is None:
            return None
        if (response is not None and response.started) or self._transport.get_extra_info("sslcontext"):
            return None  # over TLS the peer's close_notify ends the session (asyncio closes it)
        if not (self._answering_http11 if response is not None else self._queue and self._queue[0][2]):
            return None
        self._read_closed = True
        self._disarm()
        if response is not None:
            response.keep_alive = response.keep_alive and bool(self._queue)  # the last one closes
        self._flush()
        self._transport.write(_EARLY_HINTS)
        self._loop.call_later(_PEER_CHECK_FIRST, self._peer_check, _PEER_CHECK_FIRST)
        return True

    def _peer_check(self, delay: float) -> None:
        """Abort the connection (cancelling its handler) once the client's socket answered the
        interim answer with a reset; checked again later while the answer has not started."""
        response = self._response
        if self._closed or self._transport is None or self._task is None or (response and response.started):
            return
        sock = self._transport.get_extra_info("socket")
        if sock is not None and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self._abort()
            return
        delay = min(delay * 2, _PEER_CHECK_MAX)
        self._loop.call_later(delay, self._peer_check, delay)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # ---- httptools callbacks ----

    def on_message_begin(self) -> None:
        self._url, self._headers, self._header_bytes = b"", [], 0
        self._head_received, self._head_began_here, self._in_chunk_head = 0, True, False
        self._body, self._body_size, self._headers_done = [], 0, False
        self._in_message, self._continue_owed = True, False

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self._limits.max_header_bytes:
            self._refuse(414, f"request line exceeds {self._limits.max_header_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self._limits.max_header_bytes:
            self._refuse(431, f"request line and headers exceed {self._limits.max_header_bytes} bytes")
        elif len(self._headers) >= self._limits.max_headers:
            self._refuse(431, f"more than {self._limits.max_headers} header fields")
        else:
            self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._headers_done = True
        refusal, expect = check_head(
            self._parser.get_http_version(), self._headers, self._limits.max_body_bytes
        )
        if refusal is not None:
            self._refuse(refusal.status, refusal.message, extra=refusal.extra)
            return
        if self._parser.should_upgrade():
            self._refuse(400, "protocol upgrades are not supported")
            return
        # An HTTP/1.0 client knows no interim answers: it would take this one for its answer.
        # RFC 9110 10.1.1: the expectation in an HTTP/1.0 request is ignored.
        http10 = self._parser.get_http_version() == "1.0"
        continues = expect.lower() == b"100-continue" and self._transport is not None and not http10
        if continues and self._server.screen and not self._server.screen(request := self._request(b"")):
            self._withhold(request)
            return
        if self._task is None:
            self._arm(self._limits.body_timeout, self._slow_body)
        if continues:
            assert self._transport is not None
            if self._task is None:
                self._flush()
                self._transport.write(_CONTINUE)
            else:
                # An earlier request's answer is being written (pipelining): an interim
                # answer now would land inside it and garble it. Sent when it is done.
                self._continue_owed = True

    def on_chunk_header(self) -> None:
        self._in_chunk_head = self._head_began_here = True
        self._head_received = 0

    def on_chunk_complete(self) -> None:
        self._in_chunk_head = False

    def on_body(self, body: bytes) -> None:
        self._in_chunk_head = False
        if self._refused:
            return
        self._body_size += len(body)
        if self._body_size > self._limits.max_body_bytes:
            self._refuse(413, f"request body exceeds {self._limits.max_body_bytes} bytes")
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._in_message = self._continue_owed = False  # the body came without waiting
        self._disarm()
        request = self._request(b"".join(self._body))
        self._served += 1
        keep_alive = (
            self._parser.should_keep_alive() and self._served < self._limits.max_requests_per_connection
        )
        self._queue.append((request, keep_alive, self._parser.get_http_version() == "1.1"))
        assert self._transport is not None
        if len(self._queue) >= _MAX_PIPELINED:
            # Reading goes on while a request is answered (a client that leaves must be
            # seen at once: its handler is cancelled), but not without bound.
            self._transport.pause_reading()
        if self._task is None:
            self._task = self._loop.create_task(self._run())

    def _request(self, body: bytes) -> Request:
        """The request being parsed, with ``body``."""
        url = httptools.parse_url(self._url)
        if self._peer_refusal is _UNSEEN:
            self._front_peer()
        return Request(
            self._parser.get_method().decode("latin-1"),
            text(url.path or b"/"),
            text(url.query or b""),
            header_fields(self._headers),
            body,
            self._peer_certificate,
            self._peer_refusal,
        )

    def _withhold(self, request: Request) -> None:
        """Answer a request waiting for ``100 Continue`` that the screen refused without its
        body, then close: the body is never read (an unauthenticated client made the node
        read up to the body limit before its 401)."""
        self._refused = True
        self._disarm()
        self._in_message = False
        self._served += 1
        self._queue.append((request, False, True))
        if self._task is None:
            self._task = self._loop.create_task(self._run())

    # ---- handling ----

    async def _run(self) -> None:
        try:
            while self._queue and not self._closed:
                request, keep_alive, http11 = self._queue.popleft()
                keep_alive = keep_alive and not (self._read_closed and not self._queue)
                response = Response(self, keep_alive, head=request.method == "HEAD", chunkable=http11)
                self._response, self._answering_http11 = response, http11
                self._server.in_flight += 1
                try:
                    await self._server.handler(request, response)
                    if not response.started:
                        response.carry_request_id(request.header("x-request-id"))
                        await response.send(500, (), self._server.error_body(500, "no answer"))
                    elif not response.finished:
                        await response.end()
                except (ClientGone, asyncio.CancelledError):
                    self._close()
                    return
                except Exception:
                    log.exception("HTTP handler failed for %s %s", request.method, request.path[:200])
                    if response.started:
                        self._close()
                        return
                    with contextlib.suppress(ClientGone):
                        response.keep_alive = False
                        # The pipeline's ids, if any, went with what failed.
                        response.carry_request_id(request.header("x-request-id"))
                        await response.send(500, _JSON, self._server.error_body(500, "internal error"))
                finally:
                    self._response = None
                    self._server.in_flight -= 1
                    if not self._server.in_flight:
                        self._server.idle.set()  # what a drain waits for
                if not response.keep_alive:
                    self._close()
                    return
        finally:
            self._task = None
        if not self._closed and self._transport is not None:
            if self._refusal_owed is not None:
                if not self._transport.is_closing():  # else an answer closed it (an error)
                    self._write_refusal(*self._refusal_owed)
                return
            if self.draining or self._read_closed:
                self._close()
                return
            if self._in_message:  # the start of a pipelined request is here already
                if self._continue_owed:
                    self._continue_owed = False
                    self._flush()
                    self._transport.write(_CONTINUE)
                if self._headers_done:
                    # Its headers came while the answer before it was written (no timer
                    # then): what it still owes is its body, within the body's limit.
                    self._arm(self._limits.body_timeout, self._slow_body)
                else:
                    self._arm(self._limits.header_timeout, self._slow_headers)
            else:
                self._arm(self._limits.keepalive_timeout, self._idle_timeout)
            self._transport.resume_reading()

    async def write(self, data: bytes, more: bool = False) -> None:
        """``more``: more of this answer follows at once (a stream's head and chunks). Held
        until the event loop comes round (at most ``CORK_BYTES``), so what one upstream read
        delivered goes out in one ``send()``, not one per chunk; each chunk is still its own
        HTTP chunk and SSE event, sent no later than the loop's next turn."""
        if self._closed or self._transport is None or self._transport.is_closing():
            raise ClientGone()
        if more and self._writable.is_set() and self._corked_bytes + len(data) < CORK_BYTES:
            if not self._corked:
                self._loop.call_soon(self._flush)
            self._corked.append(data)
            self._corked_bytes += len(data)
            return
        if self._corked:
            self._corked.append(data)
            data = b"".join(self._corked)
            self._corked.clear()
            self._corked_bytes = 0
        self._transport.write(data)
        if not self._writable.is_set():
            try:
                async with asyncio.timeout(self._limits.write_timeout):
                    await self._writable.wait()
            except TimeoutError:
                log.info(
                    "HTTP client stopped reading for %.0f s: connection dropped", self._limits.write_timeout
                )
                self._abort()
                raise ClientGone() from None
            if self._closed:
                raise ClientGone()

    # ---- limits and timers ----

    def _refuse(
        self, status: int, message: str, *, retry_after: int | None = None, extra: bytes = b""
    ) -> None:
        """Answer an error the server finds itself and close the connection."""
        if self._refused:
            return
        self._refused = True
        self._disarm()
        if self._transport is None:
            return
        extra += b"x-request-id: %b\r\n" % self._request_id()
        if self._task is not None:
            # A request is being answered: an answer now would interleave with it. The
            # requests parsed before this one are valid and are answered first, then this
            # refusal, rather than dropping the connection with no answer to any of them.
            # What the client sends meanwhile is dropped unparsed (data_received), but still
            # read, so a client that leaves is still seen at once.
            self._refusal_owed = (status, message, retry_after, extra)
            return
        self._write_refusal(status, message, retry_after, extra)

    def _request_id(self) -> bytes:
        """The ``x-request-id`` of a refusal: the caller's, when the request got as far as
        sending a valid one (the first, as the pipeline takes it), else a new one."""
        supplied = next((value for name, value in self._headers if name == b"x-request-id"), b"")
        return request_id(text(supplied))

    def _write_refusal(self, status: int, message: str, retry_after: int | None, extra: bytes = b"") -> None:
        """``extra``: header lines of the answer, each ending in CRLF."""
        assert self._transport is not None
        body = self._server.error_body(status, message)
        head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%bconnection: close\r\n\r\n"
        if retry_after is not None:
            extra += b"retry-after: %d\r\n" % retry_after
        self._flush()
        self._transport.write(head % (status, REASONS.get(status, b"Error"), len(body), extra) + body)
        self._close()

    def _slow_headers(self) -> None:
        self._refuse(408, f"request headers not received within {self._limits.header_timeout:g} s")

    def _slow_body(self) -> None:
        self._refuse(408, f"request body not received within {self._limits.body_timeout:g} s")

    def _idle_timeout(self) -> None:
        if self._task is None and not self._in_message:
            self._close()

    # One deadline per connection, moved by every request (headers, body, keep-alive), but
    # a timer only when the deadline comes before the one pending: the pending timer, when
    # it fires early, re-arms for the deadline then current. Three timers made and cancelled
    # per request cost more than the rest of the connection's bookkeeping.

    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        deadline = self._loop.time() + seconds
        self._deadline, self._on_deadline = deadline, callback
        if self._timer is None or self._timer.when() > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(deadline, self._deadline_reached)

    def _disarm(self) -> None:
        self._on_deadline = None

    def _deadline_reached(self) -> None:
        self._timer = None
        callback = self._on_deadline
        if callback is None or self._closed:
            return
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._deadline_reached)
            return
        self._on_deadline = None
        callback()

    def _flush(self) -> None:
        """Send what ``write`` held (before any other write, and before closing)."""
        if self._corked:
            data = b"".join(self._corked)
            self._corked.clear()
            self._corked_bytes = 0
            if self._transport is not None and not self._transport.is_closing():
                self._transport.write(data)

    def _close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._flush()
            self._transport.close()

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def drain(self) -> None:
        """Stop taking requests: an idle connection closes now, a busy one after its answer."""
        self.draining = True
        if self._task is None and not self._in_message:
            self._close()

    @property
    def busy(self) -> bool:
        """A request is being answered or waits to be, or has begun arriving and is not
        refused: a drain lets it arrive (its header and body timeouts still bound that)
        and be answered."""
        if self._closed:
            return False
        return self._task is not None or (self._in_message and not self._refused)


_JSON = ((b"content-type", b"application/json"),)
CORK_BYTES = 64 * 1024
"""Held writes of a stream past this are sent at once (and wait for a client that reads)."""
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\n\r\n"
_PEER_CHECK_FIRST, _PEER_CHECK_MAX = 0.05, 1.0
"""Seconds to a half-closed client's first check for a reset, and the most between checks."""
_MAX_PIPELINED = 4
"""Requests parsed ahead of their answers before reading pauses."""


def _parser_problem(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text[:80]
