"""One keep-alive HTTP/1.1 connection to an upstream: an ``asyncio.Protocol`` over ``httptools``.

A connection carries one exchange at a time (no pipelining). The response's
body is handed to its reader as it arrives, through a small buffer: past
``HIGH_WATER`` bytes (or ``MAX_PENDING_CHUNKS`` pieces) not yet taken, the
socket stops being read until the reader takes them, so a slow consumer never
makes the node buffer more. A connection whose response ended cleanly with
keep-alive goes back to its pool (``on_reusable``); every other end (an error,
a reader leaving early, a timeout) closes it at once, so the upstream sees the
disconnect, and a reader still waiting is woken with the reason.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import httptools

from dataplane.errors import fresh

from .codings import TransferDecoder, transfer_decoder
from .errors import ReadError, ReadTimeout, RemoteProtocolError

HIGH_WATER = 256 * 1024
"""Body bytes buffered for a reader before the socket is paused."""
MAX_PENDING_CHUNKS = 1024
"""Body pieces buffered for a reader before the socket is paused, whatever their size: an
upstream sending one-byte chunks must not cost the node dozens of bytes of bookkeeping per byte."""
MAX_HEADER_BYTES = 64 * 1024
"""Header names and values of one answer; more is a protocol error, not memory spent."""
MAX_HEAD_BYTES = 2 * MAX_HEADER_BYTES
"""Bytes received before the final answer's head has ended, interim (1xx) answers included; and
bytes received in a row from which the parser made nothing (no header, body piece or chunk).

``httptools`` hands a header (or trailer) to ``on_header`` only once it is whole, buffering its
value by repeated concatenation until then, so ``MAX_HEADER_BYTES`` alone never stops a value
that does not end: memory, and quadratic copying, until the timeout. Nor does it stop an endless
series of interim answers, whose count starts again with each. Both bounds are checked on the
bytes as they arrive."""


SINGLETONS = frozenset({"content-type"})
"""Fields defined to have one value (RFC 9110 5.5, 8.3), which a sender must not repeat (RFC
9110 5.3): twice in an answer, it is malformed, and refused. Joined as a list, two media
types read as one that is neither; taking the first or the last would be a guess of which
one the upstream meant, of the kind by which an answer is read one way here and another by
a proxy on the way. (``Content-Length`` twice the parser refuses itself.)"""


class _OutOfTurn(Exception):
    """Raised inside a parser callback to stop parsing (``httptools`` reports it as a parser error)."""


class Exchange:
    """The response in progress on a connection: status, headers, then body chunks."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_connection",
        "_error",
        "_waiter",
        "complete",
        "deadline",
        "decoder",
        "headers",
        "headers_done",
        "received",
        "status",
        "until_close",
    )

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.status = 0
        self.headers: dict[str, str] = {}
        self.headers_done = False
        self.complete = False
        self.received = False
        """True once any byte of the answer arrived (a failure after that is never retried)."""
        self.until_close = False
        """The body has neither a length nor chunks: it ends when the upstream closes."""
        self.deadline: float | None = None
        """Loop time by which the whole answer must be in (no wait lasts past it), if any."""
        self.decoder: TransferDecoder | None = None
        """The body's transfer coding other than chunked (gzip, deflate), if any: undone here."""

    # -- the reader's side ------------------------------------------------------------------

    async def wait_headers(self, timeout: float) -> None:
        while not self.headers_done:
            await self._wait(timeout)

    async def next_chunk(self, timeout: float) -> bytes | None:
        """All of the body that has arrived and not been taken yet (waiting until some has), or
        None at its end. Pieces that arrived together are handed on as one (decoded: at most
        ``codings.MAX_PIECE`` bytes at a time)."""
        decoder = self.decoder
        while True:
            if decoder is not None and decoder.pending and (out := decoder.decode(b"")):
                return out
            chunks = self._chunks
            if chunks:
                if len(chunks) == 1:
                    data = chunks.popleft()
                else:
                    data = b"".join(chunks)
                    chunks.clear()
                self._buffered = 0
                self._connection.resume(self)
                if decoder is None:
                    return data
                if out := decoder.decode(data):
                    return out
                continue
            if self._error is not None:
                raise fresh(self._error)  # kept for every later read
            if self.complete:
                if decoder is not None:
                    decoder.finish()
                return None
            await self._wait(timeout)

    def close(self) -> None:
        """The reader is done: a response not read to its end takes its connection down."""
        if not self.complete or self._error is not None:
            self._connection.abort()

    async def _wait(self, timeout: float) -> None:
        if self._error is not None:
            raise fresh(self._error)  # kept for every later read
        connection = self._connection
        loop = connection.loop
        waiter = self._waiter = loop.create_future()
        when = loop.time() + timeout
        if self.deadline is not None and self.deadline < when:
            when = self.deadline
        connection.watch(self, waiter, when)
        try:
            await waiter
        finally:
            connection.watching = None
            self._waiter = None

    def time_out(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            self.fail(ReadTimeout("upstream sent nothing within the timeout"))
            self._connection.abort()

    # -- the connection's side ---------------------------------------------------------------

    def wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def fail(self, error: BaseException) -> None:
        if self._error is None and not self.complete:
            self._error = error
        self.wake()

    def add_header(self, name: str, value: str) -> None:
        found = self.headers.get(name)
        self.headers[name] = value if found is None else f"{found}, {value}"

    def add_body(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > HIGH_WATER or len(self._chunks) > MAX_PENDING_CHUNKS:
            self._connection.pause(self)
        self.wake()


class Connection(asyncio.Protocol):
    """One socket to an upstream origin, reused for requests one after another."""

    def __init__(
        self,
        on_reusable: Callable[[Connection], None],
        on_closed: Callable[[Connection], None],
        origin: tuple[str, str, int],
    ) -> None:
        self.origin = origin
        self.idle = False
        """In its origin's idle pool (the client keeps this flag)."""
        self._on_reusable = on_reusable
        self._on_closed = on_closed
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._exchange: Exchange | None = None
        self._paused = False
        self._header_bytes = 0
        self._head_bytes = 0
        self._idle_bytes = 0
        """Bytes received in a row without the parser handing anything on (``_progress``)."""
        self._progress = False
        self._reusable = True
        """False once the answer announced a body HTTP forbids it (see ``on_headers_complete``),
        or came before the request was all sent."""
        self._problem = ""
        self.closed = False
        self.used = 0
        """Requests sent on this connection; more than one means it came from the pool."""
        self.idle_since = 0.0
        """Loop time it went back to the pool."""
        self.loop = asyncio.get_running_loop()
        self.watching: tuple[Exchange, asyncio.Future[None]] | None = None
        """The reader waiting for bytes, and its waiter, until ``_watch_until``."""
        self._watch_until = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # -- used by the pool and the client ------------------------------------------------------

    def send(self, head: bytes, body: bytes | None, deadline: float | None) -> Exchange:
        assert self._transport is not None
        assert self._exchange is None
        self.used += 1
        self._head_bytes = self._idle_bytes = 0
        self._reusable = True
        self._exchange = exchange = Exchange(self)
        exchange.deadline = deadline
        self._transport.write(head)
        if body:
            self._transport.write(body)
        return exchange

    def watch(self, exchange: Exchange, waiter: asyncio.Future[None], until: float) -> None:
        """Time ``exchange``'s wait out at ``until`` (loop time). One timer per connection,
        not one per wait: it is made only when ``until`` comes before the pending one, which,
        firing early, re-arms for the wait then current (each wait of a request on a pooled
        connection ends later than the last one's, so nearly none are made)."""
        self.watching = (exchange, waiter)
        self._watch_until = until
        timer = self._timer
        if timer is None or timer.when() > until:
            if timer is not None:
                timer.cancel()
            self._timer = self.loop.call_at(until, self._watch_due)

    def _watch_due(self) -> None:
        self._timer = None
        watching = self.watching
        if watching is None:
            return
        if self.loop.time() < self._watch_until:
            self._timer = self.loop.call_at(self._watch_until, self._watch_due)
            return
        exchange, waiter = watching
        exchange.time_out(waiter)

    def usable(self) -> bool:
        return not self.closed and self._transport is not None and not self._transport.is_closing()

    def abort(self) -> None:
        """Close the socket now (no TLS goodbye to wait for): the upstream sees the disconnect."""
        if self._transport is not None:
            self._transport.abort()
        self._closed_now()

    def pause(self, exchange: Exchange) -> None:
        if exchange is self._exchange and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def resume(self, exchange: Exchange) -> None:
        if exchange is self._exchange and self._paused and self._transport is not None and not self.closed:
            self._paused = False
            self._transport.resume_reading()

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        exchange = self._exchange
        if exchange is None:
            # Bytes nobody asked for (a server talking out of turn): this connection is not reusable.
            self.abort()
            return
        exchange.received = True
        if not exchange.headers_done:
            self._head_bytes += len(data)
        self._progress = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(RemoteProtocolError("upstream switched protocols"))
        except httptools.HttpParserCallbackError:
            self._fail(RemoteProtocolError(self._problem or "upstream sent a malformed HTTP response"))
        except httptools.HttpParserError as exc:
            # The parser's reason is one of its own fixed phrases ("Duplicate Content-Length",
            # "Transfer-Encoding can't be present with Content-Length"), never the upstream's bytes.
            self._fail(RemoteProtocolError(f"upstream sent a malformed HTTP response ({exc})"))
        else:
            # Checked after feeding: the same bytes may end the head and begin the body.
            self._idle_bytes = 0 if self._progress else self._idle_bytes + len(data)
            if exchange is self._exchange and (
                (not exchange.headers_done and self._head_bytes > MAX_HEAD_BYTES)
                or self._idle_bytes > MAX_HEAD_BYTES
            ):
                self._fail(RemoteProtocolError(f"upstream sent more than {MAX_HEAD_BYTES} bytes of headers"))

    def connection_lost(self, exc: Exception | None) -> None:
        exchange = self._exchange
        if exchange is not None and not exchange.complete:
            if exchange.until_close and exc is None:
                exchange.complete = True
                exchange.wake()
            elif exc is not None:
                exchange.fail(ReadError(f"connection to the upstream failed ({type(exc).__name__})"))
            elif not exchange.headers_done:
                exchange.fail(RemoteProtocolError("upstream closed the connection without an answer"))
            else:
                exchange.fail(RemoteProtocolError("upstream closed the connection before the body ended"))
        self._closed_now()
        # The parser holds this connection's bound methods: a reference cycle, left for the
        # cyclic collector, which a serving worker runs seldom (``dataplane.collector``). No
        # byte is parsed after the connection is lost.
        del self._parser

    def eof_received(self) -> bool | None:
        return False  # close our side too: a half-closed upstream sends no more

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._exchange is None:
            # Bytes after the answer, in the read that ended it: a second answer to one request,
            # which must not become the next request's (``data_received`` catches later reads).
            raise _OutOfTurn

    def on_header(self, name: bytes, value: bytes) -> None:
        exchange = self._exchange
        if exchange is None:
            raise _OutOfTurn  # a second answer to one request
        self._progress = True
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            self._problem = f"upstream sent more than {MAX_HEADER_BYTES} bytes of headers"
            raise _OutOfTurn
        if exchange.headers_done:
            return  # a trailer field: not merged into the head the reader has (RFC 9110 6.5.1)
        field = name.decode("latin-1").lower()
        if field in SINGLETONS and field in exchange.headers:
            self._problem = f"upstream sent a malformed HTTP response (more than one {field} field)"
            raise _OutOfTurn
        exchange.add_header(field, value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        exchange = self._exchange
        if exchange is None:
            raise _OutOfTurn
        version = self._parser.get_http_version()
        if not version.startswith("1."):
            # httptools reads any one-digit version; this connection speaks HTTP/1.1 (or an
            # HTTP/1.0 server's answer), and an HTTP/2.0 status line on it is no answer to it.
            self._problem = f"upstream sent a malformed HTTP response (HTTP/{version}, not HTTP/1.1)"
            raise _OutOfTurn
        status = self._parser.get_status_code()
        self._header_bytes = 0
        self._progress = True
        if 100 <= status < 200:
            exchange.headers.clear()  # an interim answer (100 Continue, 103): the real one follows
            return
        coding = exchange.headers.get("transfer-encoding")
        if coding is not None and status not in (204, 304):
            try:
                exchange.decoder = transfer_decoder(coding)
            except RemoteProtocolError as exc:
                self._problem = str(exc)
                raise _OutOfTurn from None
        exchange.status = status
        exchange.headers_done = True
        if self._transport is not None and self._transport.get_write_buffer_size():
            # Answered before the request was all sent (an interim 100 aside): what the upstream
            # makes of the rest (a next request?) is unknown, so none follows on this socket.
            self._reusable = False
        if status in (204, 304) and (
            exchange.headers.get("content-length", "0").strip() != "0"
            or "transfer-encoding" in exchange.headers
        ):
            # The answer ends at its head (RFC 9112 6.3), but the upstream announced a body: if it
            # sends one, those bytes would arrive as the next request's answer on this socket.
            self._reusable = False
        exchange.until_close = (
            "content-length" not in exchange.headers
            and (coding is None or not coding.rstrip(" \t,").lower().endswith("chunked"))
            and status not in (204, 304)
        )
        exchange.wake()

    def on_body(self, body: bytes) -> None:
        if self._exchange is None:
            raise _OutOfTurn
        self._progress = True
        self._exchange.add_body(body)

    def on_chunk_header(self) -> None:
        self._progress = True

    def on_chunk_complete(self) -> None:
        self._progress = True

    def on_message_complete(self) -> None:
        exchange = self._exchange
        if exchange is None or not exchange.headers_done:
            return  # the end of an interim (1xx) answer
        exchange.complete = True
        exchange.wake()
        self._exchange = None
        if not self._reusable or not self._parser.should_keep_alive():
            self.abort()
            return
        if self._paused:  # the reader still has the buffer; the socket is free for the next request
            self._paused = False
            assert self._transport is not None
            self._transport.resume_reading()
        self._on_reusable(self)

    # -- internals --------------------------------------------------------------------------

    def _fail(self, error: BaseException) -> None:
        if self._exchange is not None:
            self._exchange.fail(error)
        self.abort()

    def _closed_now(self) -> None:
        if not self.closed:
            self.closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            exchange, self._exchange = self._exchange, None
            if exchange is not None:
                # Closed under a waiting reader (the client shutting down): it learns now, not at
                # its timeout. A reader already failed or done keeps what it had.
                exchange.fail(ReadError("the connection to the upstream was closed"))
            self._on_closed(self)
