"""The node's upstream client against real loopback servers that answer byte by byte, misbehaving
where a test needs it: pooling, framing, bounds, timeouts, cancellation, errors (TLS: ``test_tls``)."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from dataplane.upstream import UpstreamClient, encode_headers
from dataplane.upstream import errors as upstream_errors
from tests.helpers import eventually

from .rawserver import Handler, Peer, RawServer, Request, answer, keep_answering, post

# -- requests and framing ---------------------------------------------------------------------


async def test_the_request_head_and_body_as_sent(client: UpstreamClient) -> None:
    async with RawServer() as server:
        headers = encode_headers({"Authorization": "Bearer k", "Content-Type": "application/json"})
        response = await client.request(
            "POST",
            f"{server.url}/v1/x y?a=1",
            headers=headers,
            body=b'{"q":1}',
            timeout=5,
            params={"v": "2 3"},
        )
        assert response.status == 200
        assert response.headers["content-type"] == "application/json"
        assert await response.read(100) == (b'{"ok":true}', False)
        response.close()
    sent = server.requests[0]
    assert sent.line == b"POST /v1/x%20y?a=1&v=2+3 HTTP/1.1"
    assert sent.header("host") == f"127.0.0.1:{server.port}"
    assert sent.header("authorization") == "Bearer k"
    assert sent.header("content-length") == "7"
    assert sent.header("accept-encoding") == "identity"
    assert sent.header("cookie") is None
    assert sent.body == b'{"q":1}'


async def test_keep_alive_one_connection_for_sequential_calls(client: UpstreamClient) -> None:
    async with RawServer() as server:
        for _ in range(5):
            assert await post(client, server.url) == b'{"ok":true}'
        assert server.accepted == 1
        assert len(server.requests) == 5
        assert client.idle_connections == 1


async def test_chunked_body_in_pieces(client: UpstreamClient) -> None:
    async def chunked(server: RawServer, peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in (b"hello ", b"chunked ", b"world"):
            await peer.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        await peer.send(b"0\r\n\r\n")
        await keep_answering(server, peer)

    async with RawServer(chunked) as server:
        assert await post(client, server.url) == b"hello chunked world"
        assert await post(client, server.url) == b'{"ok":true}'  # the same connection, reused
        assert server.accepted == 1


async def test_a_body_until_close_and_connection_close_are_not_reused(client: UpstreamClient) -> None:
    async def until_close(server: RawServer, peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\n\r\nall of it")

    async with RawServer(until_close) as server:
        assert await post(client, server.url) == b"all of it"
        assert await post(client, server.url) == b"all of it"
        assert server.accepted == 2

    async def close_header(server: RawServer, peer: Peer) -> None:
        await peer.request()
        await peer.send(answer(headers="Connection: close\r\n"))
        await peer.wait_closed_by_client()

    async with RawServer(close_header) as server:
        await post(client, server.url)
        await post(client, server.url)
        assert server.accepted == 2
        await eventually(lambda: server.closed_by_client == 2, message="the client closed both")


async def test_interim_1xx_answers_are_skipped(client: UpstreamClient) -> None:
    async def interim(server: RawServer, peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
        await peer.send(answer(b"final", status="201 Created"))

    async with RawServer(interim) as server:
        response = await client.request("POST", server.url, body=b"x", timeout=5)
        assert response.status == 201
        assert "link" not in response.headers
        assert await response.read(100) == (b"final", False)


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"HTTP/1.1 204 No Content\r\nContent-Length: 64\r\n\r\n", id="204-with-a-length"),
        pytest.param(b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", id="304-chunked"),
    ],
)
async def test_a_bodiless_answer_that_announces_a_body_does_not_reuse_its_connection(
    client: UpstreamClient, head: bytes
) -> None:
    """A 204 or 304 ends at its head whatever it says; the body it announced, sent once the next
    request is in, must not become that request's answer."""
    forged = answer(b'{"forged":true}')

    async def announces_a_body(server: RawServer, peer: Peer) -> None:
        if peer.number > 1:
            await keep_answering(server, peer)
            return
        await peer.request()
        await peer.send(head)
        if await peer.request() is not None:  # the next request came on this connection
            await peer.send(forged)
            await peer.wait_closed_by_client()

    async with RawServer(announces_a_body) as server:
        response = await client.request("POST", server.url, body=b"x", timeout=5)
        assert response.status == int(head[9:12])
        assert await response.read(100) == (b"", False)
        response.close()
        assert await post(client, server.url) == b'{"ok":true}'
        assert server.accepted == 2


async def test_bytes_after_an_answer_in_the_same_read_do_not_reuse_its_connection(
    client: UpstreamClient,
) -> None:
    """Bytes after a whole answer, arriving in the same read as its end, were parsed as the start
    of another answer and the connection went back to the pool: the next request on it (another
    caller's) was answered with what the upstream had sent before that request was written."""
    forged_head = b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n"

    async def answers_twice(server: RawServer, peer: Peer) -> None:
        if peer.number > 1:
            await keep_answering(server, peer)
            return
        await peer.request()
        await peer.send(answer(b'{"first":true}') + forged_head)
        if await peer.request() is not None:  # the next request came on this connection
            await peer.send(b'\r\n{"forged":true}')
            await peer.wait_closed_by_client()

    async with RawServer(answers_twice) as server:
        assert await post(client, server.url) == b'{"first":true}'
        assert await post(client, server.url) == b'{"ok":true}'
        assert server.accepted == 2


async def test_redirects_are_answers_not_followed(client: UpstreamClient) -> None:
    async def moved(server: RawServer, peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n")

    async with RawServer(moved) as server:
        response = await client.request("POST", server.url, body=b"x", timeout=5)
        assert response.status == 302
        assert response.headers["location"] == "/elsewhere"
        assert server.accepted == 1


# -- failures -------------------------------------------------------------------------------


def replies(data: bytes) -> Handler:
    """A handler that reads one request, sends ``data`` and closes the connection."""

    async def handler(server: RawServer, peer: Peer) -> None:
        await peer.request()
        await peer.send(data)

    return handler


@pytest.mark.parametrize(
    ("sent", "error", "match"),
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc",
            upstream_errors.DecodingError,
            "content-coded",
            id="content-coded-although-identity-was-asked",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part",
            upstream_errors.RemoteProtocolError,
            "before the body ended",
            id="closed-mid-body",
        ),
        pytest.param(
            b"", upstream_errors.RemoteProtocolError, "without an answer", id="closed-without-an-answer"
        ),
        pytest.param(
            b"SSH-2.0-OpenSSH\r\n\r\n", upstream_errors.RemoteProtocolError, "malformed", id="not-http"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\n" + (b"X-Filler: " + b"f" * 100 + b"\r\n") * 1000,
            upstream_errors.RemoteProtocolError,
            "bytes of headers",
            id="headers-past-the-bound",
        ),
    ],
)
async def test_a_broken_answer_raises_the_class_classify_maps(
    client: UpstreamClient, sent: bytes, error: type[Exception], match: str
) -> None:
    async with RawServer(replies(sent)) as server:
        with pytest.raises(error, match=match):
            await post(client, server.url)
        assert server.accepted == 1  # a new connection's failure is never retried


def floods(opening: bytes, filler: bytes) -> Handler:
    """A handler that answers ``opening``, then ``filler`` over and over until the client leaves."""

    async def handler(server: RawServer, peer: Peer) -> None:
        await peer.request()
        try:
            await peer.send(opening)
            while True:
                await peer.send(filler)
        except ConnectionError:
            server.closed_by_client += 1

    return handler


@pytest.mark.parametrize(
    ("opening", "filler"),
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nX-Filler: ", b"f" * 65536, id="a-header-value-without-end"),
        pytest.param(
            b"", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" * 100, id="interim-answers-without-end"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-Trailer: ",
            b"t" * 65536,
            id="a-trailer-value-without-end",
        ),
    ],
)
async def test_a_head_that_never_ends_is_refused_as_it_arrives_not_at_the_timeout(
    client: UpstreamClient, opening: bytes, filler: bytes
) -> None:
    """httptools buffers a header value until it ends, so the bound on whole headers never fired:
    the node held (and re-copied) all an upstream sent until the timeout."""
    async with RawServer(floods(opening, filler)) as server:
        started = asyncio.get_running_loop().time()
        with pytest.raises(upstream_errors.RemoteProtocolError, match="bytes of headers"):
            await post(client, server.url, timeout=3)
        assert asyncio.get_running_loop().time() - started < 2
        await eventually(lambda: server.closed_by_client == 1, message="the upstream saw the client leave")
        assert client.open_connections == 0


@pytest.mark.parametrize(
    "before_stalling",
    [
        pytest.param(b"", id="no-headers"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", id="part-of-the-body"),
    ],
)
async def test_a_stalled_answer_times_out_and_the_connection_is_dropped(
    client: UpstreamClient, before_stalling: bytes
) -> None:
    async def stall(server: RawServer, peer: Peer) -> None:
        await peer.request()
        await peer.send(before_stalling)
        await peer.wait_closed_by_client()

    async with RawServer(stall) as server:
        with pytest.raises(upstream_errors.ReadTimeout):
            await post(client, server.url, timeout=0.2)
        await eventually(lambda: server.closed_by_client == 1, message="the upstream saw the client leave")
        assert client.open_connections == 0


async def test_a_deadline_bounds_the_whole_answer_however_it_trickles(client: UpstreamClient) -> None:
    async def trickle(server: RawServer, peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(60):  # a byte every 50 ms: no single wait comes near the 5 s timeout
            await peer.send(b"x")
            await asyncio.sleep(0.05)
        await peer.wait_closed_by_client()

    async with RawServer(trickle) as server:
        loop = asyncio.get_running_loop()
        started = loop.time()
        response = await client.request("POST", server.url, body=b"x", timeout=5, deadline=started + 0.3)
        with pytest.raises(upstream_errors.ReadTimeout):
            await response.read(10_000)
        assert loop.time() - started < 1.5
        await eventually(lambda: server.closed_by_client == 1, message="the upstream saw the client leave")


async def test_connection_refused(client: UpstreamClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(upstream_errors.ConnectError) as caught:
        await post(client, f"http://127.0.0.1:{port}/v1/chat?key=sk-secret-in-query")
    assert "sk-secret" not in str(caught.value)
    assert client.open_connections == 0


async def test_bad_urls_and_header_values_are_refused_without_echoing_them(client: UpstreamClient) -> None:
    with pytest.raises(upstream_errors.UnsupportedProtocol):
        await post(client, "ftp://127.0.0.1/x")
    with pytest.raises(upstream_errors.UnsupportedProtocol):
        await post(client, "http:///no-host")
    with pytest.raises(upstream_errors.LocalProtocolError) as caught:
        encode_headers({"x-api-key": "sk-secret\r\nX-Injected: 1"})
    assert "sk-secret" not in str(caught.value)
    assert "x-api-key" in str(caught.value)
    # "$" would match before a trailing newline: the name is matched whole.
    with pytest.raises(upstream_errors.LocalProtocolError, match="not a valid HTTP token"):
        encode_headers({"x-api-key\n": "k"})


# -- the pool -------------------------------------------------------------------------------


async def test_a_request_is_sent_once_even_when_its_pooled_connection_closes_unanswered(
    client: UpstreamClient,
) -> None:
    async def close_after_reading_the_second(server: RawServer, peer: Peer) -> None:
        # The first connection answers once, then reads the next request and hangs up
        # without an answer: the upstream may have run it (and billed for it).
        request = await peer.request()
        assert request is not None
        server.requests.append(request)
        await peer.send(answer())
        if peer.number == 1:
            again = await peer.request()
            assert again is not None
            server.requests.append(again)
            return
        await keep_answering(server, peer)

    async with RawServer(close_after_reading_the_second) as server:
        await post(client, server.url)
        # It was sent again on a new connection, silently: two runs upstream, one attempt in
        # the evidence, and a tenant's max_attempts=1 overruled. Another attempt is the
        # dispatch policy's (recorded as one).
        with pytest.raises(upstream_errors.RemoteProtocolError, match="without an answer"):
            await post(client, server.url)
        assert len(server.requests) == 2
        assert server.accepted == 1
        assert await post(client, server.url) == b'{"ok":true}'  # the next call: a new connection
        assert server.accepted == 2


def all_at_once(count: int) -> Handler:
    """A handler that answers (with the connection's number) only once ``count`` requests are
    in at the same time, each on a connection of its own; then like ``keep_answering``."""
    arrived: list[Peer] = []
    all_in = asyncio.Event()

    async def handler(server: RawServer, peer: Peer) -> None:
        await peer.request()
        arrived.append(peer)
        if len(arrived) == count:
            all_in.set()
        await all_in.wait()
        await peer.send(answer(str(peer.number).encode()))
        await keep_answering(server, peer)

    return handler


async def test_concurrent_requests_get_separate_connections(client: UpstreamClient) -> None:
    async with RawServer(all_at_once(3)) as server:
        bodies = await asyncio.gather(*(post(client, server.url) for _ in range(3)))
        assert sorted(bodies) == [b"1", b"2", b"3"]
        assert server.accepted == 3
        assert client.idle_connections == 3


async def test_idle_connections_beyond_the_bound_are_closed() -> None:
    async with RawServer(all_at_once(4)) as server, UpstreamClient(max_idle=2) as client:
        await asyncio.gather(*(post(client, server.url) for _ in range(4)))
        assert client.idle_connections == 2
        await eventually(lambda: server.closed_by_client == 2, message="two connections closed")
        assert client.open_connections == 2


async def test_idle_connections_close_after_the_idle_timeout() -> None:
    async with RawServer() as server, UpstreamClient(idle_timeout=0.1) as client:
        await post(client, server.url)
        assert client.idle_connections == 1
        await eventually(lambda: server.closed_by_client == 1, message="the idle connection closed")
        assert client.idle_connections == 0
        assert client.open_connections == 0


async def test_past_max_connections_a_request_waits_then_times_out() -> None:
    release = asyncio.Event()

    async def hold(server: RawServer, peer: Peer) -> None:
        await peer.request()
        await release.wait()
        await peer.send(answer())
        await keep_answering(server, peer)

    async with RawServer(hold) as server, UpstreamClient(max_connections=1) as client:
        first = asyncio.create_task(post(client, server.url))
        await eventually(lambda: server.accepted == 1, message="the first request is in")
        with pytest.raises(upstream_errors.PoolTimeout):
            await post(client, server.url, timeout=0.2)
        # A waiting request gets the connection as soon as it is free.
        second = asyncio.create_task(post(client, server.url))
        release.set()
        assert await first == b'{"ok":true}'
        assert await second == b'{"ok":true}'
        assert server.accepted == 1


async def test_an_upstream_that_hangs_cannot_take_the_connections_of_the_others() -> None:
    release = asyncio.Event()

    async def hang(server: RawServer, peer: Peer) -> None:
        await peer.request()
        await release.wait()

    async with (
        RawServer(hang) as hanging,
        RawServer() as healthy,
        UpstreamClient(max_connections=4) as client,
    ):
        stuck = [asyncio.create_task(post(client, hanging.url, timeout=30)) for _ in range(2)]
        await eventually(lambda: hanging.accepted == 2, message="the hanging upstream holds two")
        # Its own share is spent: one more request to it waits, then times out ...
        with pytest.raises(upstream_errors.PoolTimeout):
            await post(client, hanging.url, timeout=0.2)
        assert hanging.accepted == 2
        # ... while the healthy upstream gets connections of its own, concurrently too.
        bodies = await asyncio.gather(*(post(client, healthy.url, timeout=1) for _ in range(2)))
        assert bodies == [b'{"ok":true}'] * 2
        release.set()
        for task in stuck:
            with pytest.raises(upstream_errors.TransportError):
                await task


# -- bounds, flow control, cancellation ----------------------------------------------------------


async def test_an_oversized_body_is_cut_at_the_bound_and_not_read_further(client: UpstreamClient) -> None:
    total = 64 * 1024 * 1024
    sent = 0

    async def flood(server: RawServer, peer: Peer) -> None:
        nonlocal sent
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        piece = b"x" * 65536
        while sent < total:
            await peer.send(piece)
            sent += len(piece)

    async with RawServer(flood) as server:
        response = await client.request("POST", server.url, body=b"x", timeout=5)
        data, more = await response.read(1024 * 1024)
        response.close()
        assert more
        assert len(data) == 1024 * 1024
        await eventually(lambda: server.closed_by_client == 1, message="the upstream saw the client leave")
        assert sent < total


async def test_a_lagging_reader_pauses_the_socket(client: UpstreamClient) -> None:
    # The upstream runs in a thread of its own (as a real one runs elsewhere), so it writes as
    # fast as the socket takes bytes, whatever this event loop does.
    total = 32 * 1024 * 1024
    blocked = threading.Event()
    sent = 0

    def stream(listener: socket.socket) -> None:
        nonlocal sent
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
            piece = b"y" * 65536
            conn.settimeout(0.5)
            while sent < total:
                try:
                    sent += conn.send(piece[: total - sent])
                except TimeoutError:
                    blocked.set()  # nobody took a byte for 0.5 s: the client stopped reading
                    conn.settimeout(None)

    with socket.create_server(("127.0.0.1", 0)) as listener:
        server = threading.Thread(target=stream, args=(listener,), daemon=True)
        server.start()
        port = listener.getsockname()[1]
        response = await client.request("POST", f"http://127.0.0.1:{port}/", body=b"x", timeout=5)
        first = await anext(response)
        await eventually(blocked.is_set, timeout=20, message="the upstream blocked on a full socket")
        assert sent < total
        received = len(first)
        async for chunk in response:  # reading again resumes the socket
            received += len(chunk)
        response.close()
        await asyncio.to_thread(server.join, 10)
        assert received == total


async def test_pieces_that_arrived_together_are_handed_on_as_one(client: UpstreamClient) -> None:
    # 5,000 one-byte chunks in one write: one piece for the reader, not 5,000 (each would cost
    # the node a bytes object, a deque slot and a line-splitting pass).
    tiny = b"".join(b"1\r\n%c\r\n" % (ord("a") + i % 26) for i in range(5000))

    async def tiny_chunks(server: RawServer, peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + tiny)
        await peer.send(b"0\r\n\r\n")

    async with RawServer(tiny_chunks) as server:
        response = await client.request("POST", server.url, body=b"x", timeout=5)
        pieces = [piece async for piece in response]
        response.close()
    assert b"".join(pieces) == bytes(ord("a") + i % 26 for i in range(5000))
    assert len(pieces) < 100


async def test_cancelling_a_request_closes_its_socket(client: UpstreamClient) -> None:
    async def silent(server: RawServer, peer: Peer) -> None:
        await peer.request()
        server.requests.append(Request(b"", b""))
        await peer.wait_closed_by_client()

    async with RawServer(silent) as server:
        call = asyncio.create_task(post(client, server.url, timeout=30))
        await eventually(lambda: len(server.requests) == 1, message="the request arrived")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await eventually(lambda: server.closed_by_client == 1, message="the upstream saw the disconnect")
        assert client.open_connections == 0


async def test_closing_the_client_wakes_a_waiting_request_at_once() -> None:
    async def silent(server: RawServer, peer: Peer) -> None:
        await peer.request()
        server.requests.append(Request(b"", b""))
        await peer.wait_closed_by_client()

    async with RawServer(silent) as server:
        client = UpstreamClient()
        call = asyncio.create_task(post(client, server.url, timeout=30))
        await eventually(lambda: len(server.requests) == 1, message="the request arrived")
        await client.aclose()
        with pytest.raises(upstream_errors.ReadError):
            await asyncio.wait_for(call, 5)  # not the 30 s timeout
        await eventually(lambda: server.closed_by_client == 1, message="the upstream saw the disconnect")
        with pytest.raises(upstream_errors.TransportError, match="closed"):
            await post(client, server.url)


async def test_closing_a_stream_early_closes_its_socket(client: UpstreamClient) -> None:
    async def endless_stream(server: RawServer, peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await peer.wait_closed_by_client()

    async with RawServer(endless_stream) as server:
        response = await client.request("POST", server.url, body=b"x", timeout=5)
        assert await anext(response) == b"first"
        response.close()
        await eventually(lambda: server.closed_by_client == 1, message="the upstream saw the disconnect")
        assert client.open_connections == 0
