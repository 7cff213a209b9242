"""The HTTP front door as a public-facing server: limits, timeouts, bad HTTP, disconnects,
drain, and hostile bodies and headers (hypothesis) -- each a 4xx with a message, never a
500, and the node keeps serving."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.app import DataPlaneNode
from dataplane.evidence.log import log_path
from dataplane.evidence.records import read_records
from dataplane.http.messages import ClientGone, Limits, Request, Response
from dataplane.http.openai_api import server_error_body
from dataplane.http.server import HttpServer
from tests.dataplane.conftest import API_KEY, GatedUpstream, NodeFactory, envelope, snapshot
from tests.helpers import eventually

LIMITS = Limits(max_body_bytes=64 * 1024, header_timeout=0.5, body_timeout=0.5, keepalive_timeout=0.5)
HEADERS = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
HELLO = {"model": "sim-fast", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
async def node(start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey) -> DataPlaneNode:
    node = await start_node(http_listen="127.0.0.1:0", http_limits=LIMITS)
    assert (await node.store.apply(envelope(snapshot(1, simulator.base_url), signing_key))).accepted
    return node


@pytest.fixture
async def http(node: DataPlaneNode) -> AsyncIterator[aiohttp.ClientSession]:
    # A new connection per request: the node closes an idle one after LIMITS' 0.5 s, and a
    # POST sent on a pooled connection as the node closes it is reset, not retried (seen
    # when a loaded machine paused between hypothesis examples for longer than that).
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(f"http://{node.http_address}", connector=connector) as session:
        yield session


@pytest.fixture
async def patient_http(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey
) -> AsyncIterator[aiohttp.ClientSession]:
    """``http`` on a node with the default timeouts, for a long run of requests: with LIMITS'
    0.5 s a loaded machine that paused the client between connecting and sending (the node
    runs in the test's own event loop) saw the node close that fresh, idle connection, and
    the request sent on it was reset."""
    node = await start_node(http_listen="127.0.0.1:0", http_limits=Limits(max_body_bytes=64 * 1024))
    assert (await node.store.apply(envelope(snapshot(1, simulator.base_url), signing_key))).accepted
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(f"http://{node.http_address}", connector=connector) as session:
        yield session


async def raw(node: DataPlaneNode, data: bytes, *, then_wait: bool = True) -> bytes:
    """Send ``data`` on a fresh connection; everything the server answers until it closes."""
    host, port = node.http_address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10) if then_wait else b""
    finally:
        writer.close()


async def post_raw(node: DataPlaneNode, headers: bytes, body: bytes) -> bytes:
    """A chat request with the caller's key, ``headers`` (CRLF-ended lines) and ``body`` as
    they are; everything the server answers until it closes."""
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %b\r\n" % API_KEY.encode()
    return await raw(node, head + headers + b"\r\n" + body)


def status_and_body(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body) if body else {}


async def still_serving(http: aiohttp.ClientSession) -> None:
    async with http.post("/v1/chat/completions", json=HELLO, headers=HEADERS) as response:
        assert response.status == 200, await response.text()


@pytest.mark.parametrize(
    ("request_bytes", "status", "says"),
    [
        (b"GARBAGE\r\n\r\n", 400, "malformed HTTP request"),
        (
            b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n",
            431,
            "headers exceed",
        ),
        (
            b"GET /v1/models HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-%d: 1\r\n" % i for i in range(150))
            + b"\r\n",
            431,
            "header fields",
        ),
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n",
            413,
            "exceeds",
        ),
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            "",
        ),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 400, "upgrade"),
        (b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "one host header"),
        (b"GET /healthz HTTP/1.1\r\n\r\n", 400, "must carry a host header"),
        (b"GET /healthz HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "not a host name or address"),
        (b"GET /healthz HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, "not a host name or address"),
        (b"GET /healthz HTTP/1.1\r\nHost: a:80x\r\n\r\n", 400, "not a host name or address"),
        (b"GET /healthz HTTP/1.1\r\nHost: a@b\r\n\r\n", 400, "not a host name or address"),
    ],
    ids=[
        "garbage",
        "huge-header",
        "too-many-headers",
        "huge-body",
        "cl-and-te",
        "upgrade",
        "two-hosts",
        "no-host",
        "host-with-space",
        "host-with-path",
        "host-with-bad-port",
        "host-with-userinfo",
    ],
)
async def test_bad_http_gets_a_precise_4xx_and_the_connection_closes(
    node: DataPlaneNode, http: aiohttp.ClientSession, request_bytes: bytes, status: int, says: str
) -> None:
    got, body = status_and_body(await raw(node, request_bytes))
    assert got == status
    assert says in body["error"]["message"]
    assert body["error"]["type"] == "invalid_request_error"
    await still_serving(http)


@pytest.mark.parametrize(
    "head",
    [
        b"GET /v1/models HTTP/1.1\r\nHost: node.example:8080\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: [::1]:9000\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: \r\n",  # a target without an authority (RFC 9112 3.2)
        b"GET /v1/models HTTP/1.0\r\n",  # HTTP/1.0 has no host header to require
    ],
    ids=["name-and-port", "ipv4", "ipv6-literal", "empty", "http-1.0-without"],
)
async def test_the_hosts_a_client_may_send_are_served(node: DataPlaneNode, head: bytes) -> None:
    answer = await raw(
        node, head + b"Authorization: Bearer " + API_KEY.encode() + b"\r\nConnection: close\r\n\r\n"
    )
    got, body = status_and_body(answer)
    assert got == 200, body
    assert body["object"] == "list"


async def test_a_chunked_body_over_the_limit_is_refused_while_it_arrives(node: DataPlaneNode) -> None:
    chunk = b"a" * 16_384
    data = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    data += b"".join(b"%x\r\n%b\r\n" % (len(chunk), chunk) for _ in range(5)) + b"0\r\n\r\n"
    got, body = status_and_body(await raw(node, data))
    assert got == 413
    assert "exceeds 65536 bytes" in body["error"]["message"]


async def test_slow_headers_and_slow_bodies_get_408_and_idle_connections_close(node: DataPlaneNode) -> None:
    started = time.monotonic()
    got, body = status_and_body(await raw(node, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"))
    assert got == 408
    assert "headers not received within 0.5 s" in body["error"]["message"]
    got, body = status_and_body(
        await raw(node, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    )
    assert got == 408
    assert "body not received within 0.5 s" in body["error"]["message"]
    assert await raw(node, b"") == b""  # an idle connection: closed without a word
    assert time.monotonic() - started < 10  # each within its timeout, not the test's


async def test_pipelined_requests_are_answered_in_order(node: DataPlaneNode) -> None:
    one = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + API_KEY.encode() + b"\r\n\r\n"
    last = b"GET /v1/nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = await raw(node, one + one + last)
    statuses = [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)]
    assert statuses == [200, 200, 404]


async def test_routes_methods_and_bodies_that_are_wrong(http: aiohttp.ClientSession) -> None:
    async with http.get("/v1/chat/completions", headers=HEADERS) as response:
        assert response.status == 405
        assert response.headers["allow"] == "POST"
    async with http.post("/v2/anything", headers=HEADERS) as response:
        assert response.status == 404
        assert (await response.json())["error"]["type"] == "not_found_error"
    async with http.post("/v1/chat/completions", data=b"{not json", headers=HEADERS) as response:
        assert response.status == 400
        error = (await response.json())["error"]
        assert error["param"] == "body"
        assert "not valid JSON" in error["message"]
    bad = {**HELLO, "messages": [{"role": "user", "content": [{"type": "video", "url": "x"}]}]}
    async with http.post("/v1/chat/completions", json=bad, headers=HEADERS) as response:
        assert response.status == 400
        assert (await response.json())["error"]["param"] == "messages[0].content[0].type"
    async with http.post("/v1/chat/completions", json=HELLO) as response:
        assert response.status == 401  # no key: told so before anything about the body
        assert response.headers["x-request-id"]


async def test_a_refused_request_still_has_its_ids_and_its_record(
    http: aiohttp.ClientSession, node: DataPlaneNode
) -> None:
    async with http.post(
        "/v1/chat/completions", json={**HELLO, "n": 3}, headers={**HEADERS, "x-request-id": "refused-1"}
    ) as response:
        assert response.status == 400
        evidence_id = response.headers["x-evidence-id"]
        assert response.headers["x-request-id"] == "refused-1"
        assert "request id refused-1" in (await response.json())["error"]["message"]
    path = log_path(node.settings.data_dir, node.settings.node_id)
    await eventually(lambda: any(r["record_id"] == evidence_id for r in read_records(path)))


@pytest.fixture
async def gated(
    start_node: NodeFactory, gated_upstream: GatedUpstream, signing_key: Ed25519PrivateKey
) -> DataPlaneNode:
    node = await start_node(http_listen="127.0.0.1:0", http_limits=LIMITS)
    snap = snapshot(1, gated_upstream.base_url, provider_type="openai_compatible")
    assert (await node.store.apply(envelope(snap, signing_key))).accepted
    return node


STREAM = {**HELLO, "stream": True}


async def test_a_client_leaving_mid_stream_closes_the_upstream_stream(
    gated: DataPlaneNode, gated_upstream: GatedUpstream
) -> None:
    async with aiohttp.ClientSession(f"http://{gated.http_address}") as session:
        response = await session.post("/v1/chat/completions", json=STREAM, headers=HEADERS)
        assert response.status == 200
        evidence_id = response.headers["x-evidence-id"]
        first = await response.content.readuntil(b"\n\n")
        assert first.startswith(b"data: ")
        await eventually(gated_upstream.first_sent.is_set)
        response.close()  # the client hangs up mid-stream
    await eventually(gated_upstream.disconnected.is_set, message="the upstream saw the hang-up")
    assert not gated_upstream.finished.is_set()
    path = log_path(gated.settings.data_dir, gated.settings.node_id)

    def cancelled() -> bool:
        return any(
            r["record_id"] == evidence_id and r["outcome"]["code"] == "CANCELLED" for r in read_records(path)
        )

    await eventually(cancelled, message="the stream's record says CANCELLED")


async def test_an_http_1_0_client_leaving_before_its_answer_closes_the_upstream_call(
    gated: DataPlaneNode, gated_upstream: GatedUpstream
) -> None:
    # A client of HTTP/1.0 (no keep-alive) that left while its answer was awaited was seen
    # only once the answer was written: the upstream call ran on, and was paid for, first.
    host, port = gated.http_address.rsplit(":", 1)
    body = json.dumps(HELLO).encode()
    head = (
        b"POST /v1/chat/completions HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer %b\r\n"
        b"Content-Type: application/json\r\nX-Request-Id: left-1-0\r\nContent-Length: %d\r\n\r\n"
    )
    sock = socket.create_connection((host, int(port)))
    try:
        sock.sendall(head % (API_KEY.encode(), len(body)) + body)
        await eventually(gated_upstream.first_sent.is_set, message="the upstream call is under way")
    finally:
        sock.close()
    await eventually(gated_upstream.disconnected.is_set, message="the upstream saw the hang-up")
    assert not gated_upstream.finished.is_set()
    path = log_path(gated.settings.data_dir, gated.settings.node_id)

    def cancelled() -> bool:
        return any(
            r["correlation_id"] == "left-1-0" and r["outcome"]["code"] == "CANCELLED"
            for r in read_records(path)
        )

    await eventually(cancelled, message="the request's record says CANCELLED")


async def test_a_stop_lets_a_stream_in_flight_finish_and_takes_no_new_connection(
    gated: DataPlaneNode, gated_upstream: GatedUpstream
) -> None:
    address = gated.http_address
    async with aiohttp.ClientSession(f"http://{address}") as session:
        response = await session.post("/v1/chat/completions", json=STREAM, headers=HEADERS)
        await eventually(gated_upstream.first_sent.is_set)
        stopping = asyncio.ensure_future(gated.stop(10))
        await eventually(lambda: not gated.http_accepting, message="the door stops accepting")
        host, port = address.rsplit(":", 1)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(host, int(port))
        gated_upstream.release.set()
        body = await response.read()
        assert body.endswith(b"data: [DONE]\n\n")
        assert b'"finish_reason":"stop"' in body
        await stopping


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
            ),
            max_leaves=12,
        ).map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries(
            {"model": st.sampled_from(["sim-fast", "auto", "", "nope"])},
            optional={
                "messages": st.lists(
                    st.fixed_dictionaries(
                        {"role": st.sampled_from(["user", "system", "tool", "assistant", "robot"])},
                        optional={"content": st.one_of(st.text(max_size=10), st.none(), st.integers())},
                    ),
                    max_size=3,
                ),
                "temperature": st.one_of(
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=3)
                ),
                "max_tokens": st.integers(min_value=-(2**70), max_value=2**70),
                "stop": st.one_of(st.text(max_size=5), st.lists(st.integers(), max_size=2)),
                "tools": st.lists(
                    st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=2), max_size=2
                ),
                "stream": st.one_of(st.booleans(), st.integers()),
            },
        ).map(lambda v: json.dumps(v).encode()),
    ),
    path=st.sampled_from(["/v1/chat/completions", "/v1/embeddings"]),
    header=st.sampled_from(
        ["x-signalbox-data-class", "x-signalbox-capabilities", "x-request-id", "x-signalbox-task"]
    ),
    value=st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
)
async def test_hostile_bodies_and_headers_get_a_4xx_with_a_message_never_a_5xx(
    patient_http: aiohttp.ClientSession, body: bytes, path: str, header: str, value: str
) -> None:
    http = patient_http
    async with http.post(path, data=body, headers={**HEADERS, header: value}) as response:
        if response.status != 200:
            assert 400 <= response.status < 500, (response.status, await response.text())
            error = (await response.json())["error"]
            assert error["message"]
            assert len(error["message"]) < 2000
            assert response.headers["x-evidence-id"]
    await still_serving(http)


async def test_a_client_that_stops_reading_is_dropped_after_the_write_timeout() -> None:
    outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def firehose(request: Request, response: Response) -> None:
        await response.start(200, ((b"content-type", b"text/event-stream"),))
        try:
            for _ in range(10_000):  # up to 640 MiB: far more than any socket buffers hold
                await response.write(b"x" * 65_536)
        except ClientGone:
            outcome.set_result("dropped")
            raise
        outcome.set_result("all written")

    server = HttpServer(firehose, server_error_body, Limits(write_timeout=0.5))
    await server.start("127.0.0.1", 0)
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
        await asyncio.get_running_loop().sock_sendall(sock, b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        # The client never reads: the server's buffers fill, and it gives up on the client.
        assert await asyncio.wait_for(outcome, 30) == "dropped"
        sock.close()
        assert server.in_flight == 0
    finally:
        await server.close(1)


async def test_generated_request_and_evidence_ids_are_distinct_random_hex(
    http: aiohttp.ClientSession, node: DataPlaneNode
) -> None:
    # Without an x-request-id both ids are generated (from one random draw): each 128 bits of
    # hex, none repeated across requests, and each names its own record.
    ids: list[tuple[str, str]] = []
    for _ in range(5):
        async with http.post("/v1/chat/completions", json=HELLO, headers=HEADERS) as response:
            assert response.status == 200
            ids.append((response.headers["x-request-id"], response.headers["x-evidence-id"]))
    every = [i for pair in ids for i in pair]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in every), every
    assert len(set(every)) == len(every)
    path = log_path(node.settings.data_dir, node.settings.node_id)
    expected = {evidence: request for request, evidence in ids}

    def recorded() -> bool:
        found = {r["record_id"]: r["correlation_id"] for r in read_records(path)}
        return all(found.get(evidence) == request for evidence, request in expected.items())

    await eventually(recorded)


async def test_a_body_that_says_stream_false_is_answered_whole_and_a_bad_one_after_auth(
    http: aiohttp.ClientSession,
) -> None:
    # The door parses a body that names "stream" to see whether it streams, and decodes that
    # same parse: the answer is as for any body, and a broken one is still refused only after
    # the caller is authenticated.
    async with http.post(
        "/v1/chat/completions", json={**HELLO, "stream": False}, headers=HEADERS
    ) as response:
        assert response.status == 200
        assert response.headers["content-type"] == "application/json"
        body = await response.json()
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"]
    async with http.post(
        "/v1/chat/completions", json={**HELLO, "stream": False, "n": 3}, headers=HEADERS
    ) as response:
        assert response.status == 400
    broken = b'{"stream": true, "model": '
    async with http.post("/v1/chat/completions", data=broken) as response:
        assert response.status == 401
    async with http.post("/v1/chat/completions", data=broken, headers=HEADERS) as response:
        assert response.status == 400
        assert (await response.json())["error"]["param"] == "body"


@pytest.mark.parametrize("role", [{"name": "user"}, ["user"]], ids=["object", "array"])
async def test_a_role_that_is_not_a_string_is_a_400_naming_the_field(
    http: aiohttp.ClientSession, node: DataPlaneNode, role: Any
) -> None:
    # An object or array role once reached a dict lookup (unhashable): a 500 "internal
    # error" for a caller's bad body.
    body = {"model": "sim-fast", "messages": [{"role": role, "content": "hi"}]}
    async with http.post("/v1/chat/completions", json=body, headers=HEADERS) as response:
        assert response.status == 400, await response.text()
        error = (await response.json())["error"]
        assert error["param"] == "messages[0].role"
        assert "must be one of system" in error["message"]
        evidence_id = response.headers["x-evidence-id"]
    path = log_path(node.settings.data_dir, node.settings.node_id)
    await eventually(
        lambda: any(
            r["record_id"] == evidence_id and r["outcome"]["code"] == "INVALID_ARGUMENT"
            for r in read_records(path)
        )
    )


async def test_an_answer_to_head_has_no_body_so_the_next_answer_is_not_garbled(node: DataPlaneNode) -> None:
    # A HEAD answered with a body: a keep-alive client reads the headers only (RFC 9112
    # 6.3), and the body's bytes are then taken for the start of the next answer.
    answer = await raw(
        node,
        b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 ")
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n"), rest
    assert rest.endswith(b'{"status":"ok"}')


async def test_a_chunked_answer_to_head_writes_its_head_only() -> None:
    async def events(request: Request, response: Response) -> None:
        await response.start(200, ((b"content-type", b"text/event-stream"),))
        await response.write(b"data: one\n\n")
        await response.end()

    server = HttpServer(events, server_error_body, LIMITS)
    await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"HEAD /e HTTP/1.1\r\nHost: x\r\n\r\nGET /e HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    finally:
        await server.close(1)
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n"), rest
    assert rest.endswith(b"\r\n\r\nb\r\ndata: one\n\n\r\n0\r\n\r\n")


async def test_100_continue_for_a_pipelined_request_waits_for_the_answer_before_it() -> None:
    release = asyncio.Event()

    async def handler(request: Request, response: Response) -> None:
        if request.path == "/slow":
            await response.start(200, ((b"content-type", b"text/event-stream"),))
            await response.write(b"data: one\n\n")
            await release.wait()
            await response.write(b"data: two\n\n")
            await response.end()
        else:
            await response.send(200, (), b"got %d bytes" % len(request.body))

    server = HttpServer(handler, server_error_body, LIMITS)
    await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readuntil(b"data: one\n\n\r\n")  # its answer is being written
        writer.write(b"POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        await writer.drain()
        # One answer on another connection: by then the server has read the Expect above
        # (it was in the socket before this request, and one read of the loop sees both).
        ping_reader, ping_writer = await asyncio.open_connection("127.0.0.1", server.port)
        ping_writer.write(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(ping_reader.read(), 10)).startswith(b"HTTP/1.1 200 ")
        ping_writer.close()
        release.set()
        # The stream ends whole, with no interim answer inside it; then the 100 Continue.
        rest_of_stream = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 10)
        assert rest_of_stream == b"b\r\ndata: two\n\n\r\n0\r\n\r\n"
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert await reader.readexactly(len(b"got 5 bytes")) == b"got 5 bytes"
        writer.close()
    finally:
        await server.close(1)


@pytest.mark.parametrize(
    ("bad", "status", "says"),
    [
        (b"GARBAGE\r\n\r\n", 400, "malformed HTTP request"),
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n",
            413,
            "exceeds",
        ),
    ],
    ids=["malformed", "too-large"],
)
async def test_a_bad_pipelined_request_is_refused_after_the_good_ones_before_it_are_answered(
    node: DataPlaneNode, bad: bytes, status: int, says: str
) -> None:
    # The bad request arrives while the good one is being answered: the connection was
    # dropped at once, with no answer to either (and the good one's record CANCELLED).
    body = json.dumps(HELLO).encode()
    good = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %b\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (API_KEY.encode(), len(body), body)
    )
    answer = await raw(node, good + bad)
    first, _, rest = answer.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200 OK\r\n"), answer[:300]
    length = int(re.search(rb"content-length: (\d+)", first).group(1))  # type: ignore[union-attr]
    assert json.loads(rest[:length])["object"] == "chat.completion"
    got, error = status_and_body(rest[length:])
    assert got == status
    assert says in error["error"]["message"]


@pytest.mark.parametrize("value", ["9" * 400, "abc", "5s", "0", "-5", "+5", "1_000", "2147483648"], ids=repr)
async def test_a_bad_timeout_header_is_a_400_naming_it_not_a_500_or_ignored(
    http: aiohttp.ClientSession, value: str
) -> None:
    # 400 digits overflowed the division to seconds (a 500 without ids or record); the
    # rest were ignored, running the request on the node's default deadline instead.
    headers = {**HEADERS, "x-signalbox-timeout-ms": value}
    async with http.post("/v1/chat/completions", json=HELLO, headers=headers) as response:
        assert response.status == 400, await response.text()
        error = (await response.json())["error"]
        assert error["param"] == "x-signalbox-timeout-ms"
        assert "whole number of milliseconds" in error["message"]
        assert len(error["message"]) < 300
        assert response.headers["x-request-id"]
        assert response.headers["x-evidence-id"]
    async with http.post(
        "/v1/chat/completions", json=HELLO, headers={**HEADERS, "x-signalbox-timeout-ms": "30000"}
    ) as response:
        assert response.status == 200


def _tool(name: str, parameters: Any = None) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


@pytest.mark.parametrize(
    ("path", "fields", "param"),
    [
        ("/v1/chat/completions", {"max_tokens": 0}, "max_tokens"),
        ("/v1/chat/completions", {"max_completion_tokens": 0}, "max_completion_tokens"),
        ("/v1/chat/completions", {"max_tokens": 10, "max_completion_tokens": 4000}, "max_tokens"),
        ("/v1/chat/completions", {"temperature": 5}, "temperature"),
        ("/v1/chat/completions", {"top_p": 0}, "top_p"),
        ("/v1/chat/completions", {"stop": [""]}, "stop"),
        ("/v1/chat/completions", {"tools": [_tool("no spaces")]}, "tools[0].function.name"),
        ("/v1/chat/completions", {"tools": [_tool("f", {"type": 5})]}, "tools[0].function.parameters"),
        (
            "/v1/chat/completions",
            {"tools": [_tool("f")], "tool_choice": {"type": "function", "function": {"name": "g"}}},
            "tool_choice.function.name",
        ),
        ("/v1/chat/completions", {"tool_choice": "required"}, "tool_choice"),
        (
            "/v1/chat/completions",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,"}}],
                    }
                ]
            },
            "messages[0].content[0].image_url.url",
        ),
        (
            "/v1/chat/completions",
            {"response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": 5}}}},
            "response_format.json_schema.schema",
        ),
        (
            "/v1/chat/completions",
            {"response_format": {"type": "json_schema", "json_schema": "r"}},
            "response_format.json_schema",
        ),
        ("/v1/embeddings", {"model": "sim-embed", "input": []}, "input"),
        ("/v1/embeddings", {"model": "sim-embed", "input": ""}, "input"),
        ("/v1/embeddings", {"model": "sim-embed", "input": ["a", ""]}, "input[1]"),
    ],
    ids=lambda v: v if isinstance(v, str) and not v.startswith("/") else None,
)
async def test_a_refused_field_is_named_as_the_caller_sent_it(
    http: aiohttp.ClientSession, path: str, fields: dict[str, Any], param: str
) -> None:
    # The shared validation names the pipeline's request (params.max_output_tokens,
    # tools[0].name, inputs): an OpenAI caller was pointed at fields it never sent.
    body = {**HELLO, **fields} if path == "/v1/chat/completions" else fields
    async with http.post(path, json=body, headers=HEADERS) as response:
        assert response.status == 400, await response.text()
        error = (await response.json())["error"]
    assert error["param"] == param
    assert error["message"].startswith(f"{param}: "), error["message"]


async def test_a_stop_lets_a_request_whose_body_is_arriving_finish(node: DataPlaneNode) -> None:
    # The drain waited only for requests being answered: one whose body was still on its
    # way was dropped with the connection (no answer), though the grace had seconds left.
    body = json.dumps(HELLO).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %b\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (API_KEY.encode(), len(body), body)
    )
    host, port = node.http_address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request[:-5])
        await writer.drain()
        # One answer on another connection: by then the node has read the bytes above.
        assert (await raw(node, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")).startswith(
            b"HTTP/1.1 200 "
        )
        stopping = asyncio.ensure_future(node.stop(5))
        await eventually(lambda: not node.http_accepting, message="the door stops accepting")
        writer.write(request[-5:])
        answer = await asyncio.wait_for(reader.read(), 10)
        await stopping
    finally:
        writer.close()
    head, _, _ = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), answer[:300]
    assert b"connection: close" in head


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/v1/models", "/v1/models/sim-fast"])
async def test_head_is_answered_as_get_without_the_body(http: aiohttp.ClientSession, path: str) -> None:
    # Every server must take HEAD where it takes GET (RFC 9110 9.1): a load balancer's
    # HEAD /healthz got 405, and the node was taken out of service.
    async with http.get(path, headers=HEADERS) as got:
        assert got.status == 200
        length = got.headers["content-length"]
    async with http.head(path, headers=HEADERS) as response:
        assert response.status == 200
        assert response.headers["content-length"] == length
        assert await response.read() == b""
    async with http.delete(path, headers=HEADERS) as response:
        assert response.status == 405
        assert response.headers["allow"] == "GET, HEAD"


async def test_a_body_that_asks_to_stream_with_an_escaped_key_is_streamed(
    http: aiohttp.ClientSession,
) -> None:
    # The door looked for the bytes "stream" to decide: a key spelled with a JSON escape
    # asked to stream (with stream_options) and got a whole answer.
    body = b'{"model":"sim-fast","messages":[{"role":"user","content":"hi"}],"\\u0073tream":true}'
    async with http.post("/v1/chat/completions", data=body, headers=HEADERS) as response:
        assert response.status == 200
        assert response.headers["content-type"] == "text/event-stream"
        assert (await response.read()).endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize(
    "start",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: ",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-Trailer: ",
    ],
    ids=["header", "trailer"],
)
async def test_a_header_line_that_never_ends_is_refused_at_the_limit_not_buffered(start: bytes) -> None:
    # httptools holds a header line (or a trailer's) until its CRLF: the limit was checked
    # on whole lines only, so a line that never ended was buffered, tens of MB a second,
    # until the header (or body) timeout.
    async def hello(request: Request, response: Response) -> None:
        await response.send(200, (), b"hi")

    limits = Limits(max_header_bytes=32 * 1024, header_timeout=3, body_timeout=3)
    server = HttpServer(hello, server_error_body, limits)
    await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(start + b"a" * 1000)
        await writer.drain()
        # One answer on another connection: by then the server has read the bytes above,
        # so what follows comes in reads of its own.
        ping_reader, ping_writer = await asyncio.open_connection("127.0.0.1", server.port)
        ping_writer.write(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(ping_reader.read(), 10)).startswith(b"HTTP/1.1 200 ")
        ping_writer.close()
        writer.write(b"a" * 40_000)  # still no CRLF
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    finally:
        await server.close(1)
    got, body = status_and_body(answer)
    assert got == 431, answer[:200]
    assert "exceed 32768 bytes" in body["error"]["message"]


async def test_a_streamed_answer_to_http_1_0_is_not_chunked() -> None:
    # An HTTP/1.0 client does not know chunked framing (RFC 9112 7): it got the chunk sizes
    # as part of the body. Its stream is the bytes as they are, ended by the close.
    async def events(request: Request, response: Response) -> None:
        await response.start(200, ((b"content-type", b"text/event-stream"),))
        await response.write(b"data: one\n\n")
        await response.write(b"data: two\n\n")
        await response.end()

    server = HttpServer(events, server_error_body, LIMITS)
    await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /e HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)  # ends: the server closes
        writer.close()
    finally:
        await server.close(1)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head
    assert b"connection: close" in head
    assert body == b"data: one\n\ndata: two\n\n"


@pytest.mark.parametrize(
    "codings", [b"gzip, chunked", b"deflate\r\nTransfer-Encoding: chunked"], ids=["list", "two"]
)
async def test_a_transfer_coding_other_than_chunked_is_refused_not_ignored(
    node: DataPlaneNode, http: aiohttp.ClientSession, codings: bytes
) -> None:
    # httptools frames a body whose last coding is chunked and leaves the rest to us: the
    # body reached the door still gzip-coded, refused as "not valid JSON" at best.
    body = gzip.compress(json.dumps(HELLO).encode())
    got, error = status_and_body(
        await post_raw(
            node, b"Transfer-Encoding: %b\r\n" % codings, b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
        )
    )
    assert got == 501
    assert "only chunked" in error["error"]["message"]
    assert error["error"]["type"] == "invalid_request_error"
    await still_serving(http)


async def test_an_http_1_0_request_gets_no_100_continue() -> None:
    # RFC 9110 10.1.1: an HTTP/1.0 client knows no interim answers; it took "100 Continue"
    # for its answer.
    async def echo(request: Request, response: Response) -> None:
        await response.send(200, (), request.body)

    server = HttpServer(echo, server_error_body, LIMITS)
    await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"POST /e HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello")
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    finally:
        await server.close(1)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
    assert answer.endswith(b"\r\n\r\nhello")


@pytest.mark.parametrize("coding", [b"gzip", b"deflate", b"identity, gzip"])
async def test_a_compressed_request_body_is_refused_as_such_not_as_bad_json(
    node: DataPlaneNode, http: aiohttp.ClientSession, coding: bytes
) -> None:
    # The door decodes no content coding: a gzip body reached the JSON parser as it came and
    # was refused as "not valid JSON ('str is not valid UTF-8 ...')", naming neither the
    # header nor the remedy.
    body = gzip.compress(json.dumps(HELLO).encode())
    answer = await post_raw(
        node, b"Content-Encoding: %b\r\nContent-Length: %d\r\n" % (coding, len(body)), body
    )
    got, error = status_and_body(answer)
    assert got == 415, answer[:300]
    assert "content-encoding" in error["error"]["message"]
    assert "uncompressed" in error["error"]["message"]
    assert error["error"]["type"] == "invalid_request_error"
    head = answer.partition(b"\r\n\r\n")[0].lower()
    assert b"accept-encoding: identity" in head
    assert b"connection: close" in head
    await still_serving(http)


async def test_an_identity_content_coding_is_a_plain_body(
    node: DataPlaneNode, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        "/v1/chat/completions",
        data=json.dumps(HELLO).encode(),
        headers={
            "authorization": f"Bearer {API_KEY}",
            "content-type": "application/json",
            "content-encoding": "identity",
        },
    ) as response:
        assert response.status == 200, await response.text()
