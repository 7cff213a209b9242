"""Every answer of the HTTP door carries ``x-request-id``: the caller's own when it is one the
pipeline would take, else a new one. The pipeline's answers (served or refused) carry the
correlation id and ``x-evidence-id`` (``test_openai_sdk``, ``test_http_hardening``); these
are the others: what the server refuses itself, unknown paths and methods, the model list,
the probes, and a handler that fails. None of them writes an evidence record or carries
``x-evidence-id``."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.app import DataPlaneNode
from dataplane.evidence.log import log_path
from dataplane.evidence.records import read_records
from dataplane.http.messages import Limits, Request, Response
from dataplane.http.openai_api import server_error_body
from dataplane.http.server import HttpServer
from tests.dataplane.conftest import API_KEY, NodeFactory, envelope, snapshot

from .test_http_hardening import raw


@pytest.fixture
async def door(start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey) -> DataPlaneNode:
    """A node's HTTP door with a 64 KiB body limit, serving the test snapshot."""
    node = await start_node(http_listen="127.0.0.1:0", http_limits=Limits(max_body_bytes=64 * 1024))
    assert (await node.store.apply(envelope(snapshot(1, simulator.base_url), signing_key))).accepted
    return node


FRESH = re.compile(rb"[0-9a-f]{32}")
AUTH = b"Authorization: Bearer %b\r\n" % API_KEY.encode()


def _ids(answer: bytes) -> tuple[int, list[bytes], list[bytes]]:
    """The status, the x-request-id values and the x-evidence-id values of one answer."""
    head = answer.partition(b"\r\n\r\n")[0].split(b"\r\n")
    fields = [line.partition(b":") for line in head[1:]]
    of = lambda name: [value.strip() for key, _, value in fields if key.lower() == name]  # noqa: E731
    return int(head[0].split(b" ", 2)[1]), of(b"x-request-id"), of(b"x-evidence-id")


REQUESTS = {
    "unknown path": (b"GET /v2/nowhere HTTP/1.1\r\nHost: x\r\n%b", 404),
    "wrong method": (b"GET /v1/chat/completions HTTP/1.1\r\nHost: x\r\n%b" + AUTH, 405),
    "model list": (b"GET /v1/models HTTP/1.1\r\nHost: x\r\n%b" + AUTH, 200),
    "model list, no key": (b"GET /v1/models HTTP/1.1\r\nHost: x\r\n%b", 401),
    "one model": (b"GET /v1/models/sim-fast HTTP/1.1\r\nHost: x\r\n%b" + AUTH, 200),
    "HEAD of a probe": (b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n%b", 200),
    "readiness": (b"GET /readyz HTTP/1.1\r\nHost: x\r\n%b", 200),
    "body over the limit": (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n%bContent-Length: 999999\r\n",
        413,
    ),
    "compressed body": (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n%bContent-Encoding: gzip\r\nContent-Length: 2\r\n",
        415,
    ),
    "no host": (b"GET /v1/models HTTP/1.1\r\n%b" + AUTH, 400),
    "an upgrade": (b"GET /v1/models HTTP/1.1\r\nHost: x\r\n%bConnection: Upgrade\r\nUpgrade: h2c\r\n", 400),
}


@pytest.mark.parametrize("case", list(REQUESTS))
@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        (b"mine-1", b"mine-1"),
        (None, FRESH),
        (b"has space", FRESH),  # not one the pipeline would take: replaced, not echoed
        (b"x" * 129, FRESH),
    ],
    ids=["echoed", "none sent", "invalid", "too long"],
)
async def test_answers_no_pipeline_gives_carry_a_request_id(
    door: DataPlaneNode,
    case: str,
    sent: bytes | None,
    expected: bytes | re.Pattern[bytes],
) -> None:
    head, status = REQUESTS[case]
    header = b"" if sent is None else b"X-Request-Id: %b\r\n" % sent
    answer = await raw(door, head % header + b"Connection: close\r\n\r\n" + (b"{}" if status == 415 else b""))
    got, request_ids, evidence_ids = _ids(answer)
    assert got == status, answer[:300]
    assert len(request_ids) == 1, answer[:300]
    if isinstance(expected, bytes):
        assert request_ids == [expected]
    else:
        assert expected.fullmatch(request_ids[0]), request_ids
    assert evidence_ids == []


async def test_a_refusal_before_any_header_carries_a_new_request_id(door: DataPlaneNode) -> None:
    got, request_ids, _ = _ids(await raw(door, b"GARBAGE\r\n\r\n"))
    assert got == 400
    assert len(request_ids) == 1
    assert FRESH.fullmatch(request_ids[0])


async def test_none_of_them_writes_an_evidence_record(door: DataPlaneNode) -> None:
    for head, status in REQUESTS.values():
        answer = await raw(
            door, head % b"" + b"Connection: close\r\n\r\n" + (b"{}" if status == 415 else b"")
        )
        assert _ids(answer)[0] == status
    assert list(read_records(log_path(door.settings.data_dir, door.settings.node_id))) == []


async def test_a_handler_that_fails_answers_500_with_a_request_id() -> None:
    async def failing(request: Request, response: Response) -> None:
        raise RuntimeError("a bug")

    server = HttpServer(failing, server_error_body, Limits())
    await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: mine-500\r\n\r\n")
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.close()
    finally:
        await server.close(1.0)
    got, request_ids, _ = _ids(answer)
    assert (got, request_ids) == (500, [b"mine-500"])
