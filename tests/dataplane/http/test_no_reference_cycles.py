"""What the HTTP door leaves behind is freed by reference counting alone.

A serving worker runs the cyclic garbage collector seldom (``dataplane.collector``): a
reference cycle made per request or per connection would hold its memory (a request's body,
a connection's buffers) until a collection many thousands of objects later. Each test
serves one kind of exchange with the collector off, then collects with ``DEBUG_SAVEALL``
and looks for the node's own objects among the garbage: there must be none. The test's
client and the simulator (aiohttp) leave cycles of their own, which are not counted.
"""

from __future__ import annotations

import asyncio
import gc
import types
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

import dataplane
from dataplane.app import DataPlaneNode
from signalbox.shell.simulator.behaviour import Behaviour
from tests.dataplane.conftest import API_KEY
from tests.helpers import eventually

ROUNDS = 20
DATAPLANE = str(Path(dataplane.__file__).parent)
CHAT = {"model": "sim-fast", "messages": [{"role": "user", "content": "hello there, how are you"}]}
STREAM = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}


def _ours(obj: object) -> bool:
    """An object of the node's code: an instance of its classes, or a coroutine, frame or
    bound method of its functions."""
    if isinstance(obj, types.MethodType):
        return _ours(obj.__self__)
    if isinstance(obj, types.CoroutineType | types.GeneratorType | types.AsyncGeneratorType):
        code = getattr(obj, "cr_code", None) or getattr(obj, "gi_code", None) or getattr(obj, "ag_code", None)
        return code is not None and code.co_filename.startswith(DATAPLANE)
    if isinstance(obj, types.FrameType):
        return obj.f_code.co_filename.startswith(DATAPLANE)
    return type(obj).__module__.startswith("dataplane.")


@contextmanager
def _garbage_of_the_node() -> Iterator[list[str]]:
    """Collector off inside; on the way out, the names of the node's objects that only the
    cyclic collector would have freed."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    found: list[str] = []
    try:
        yield found
    finally:
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            found.extend(sorted({type(o).__qualname__ for o in gc.garbage if _ours(o)}))
        finally:
            gc.garbage.clear()
            gc.set_debug(0)
            if was_enabled:
                gc.enable()


def _head(body: bytes, *, key: str = API_KEY, close: bool = False) -> bytes:
    return (
        "POST /v1/chat/completions HTTP/1.1\r\nhost: node\r\n"
        f"authorization: Bearer {key}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n" + ("connection: close\r\n" if close else "") + "\r\n"
    ).encode() + body


async def _answer(reader: asyncio.StreamReader) -> int:
    """Read one whole answer (sized or chunked) and return its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
    lowered = {k.strip().lower(): v.strip() for k, v in fields.items()}
    if lowered.get(b"transfer-encoding") == b"chunked":
        await reader.readuntil(b"0\r\n\r\n")
    else:
        await reader.readexactly(int(lowered.get(b"content-length", b"0")))
    return int(head.split(b" ", 2)[1])


class _Client:
    def __init__(self, node: DataPlaneNode) -> None:
        host, port = node.http_address.rsplit(":", 1)
        self.host, self.port = host, int(port)

    async def exchange(self, body: bytes, **head: Any) -> int:
        """One request on its own connection, closed by the client afterwards."""
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(_head(body, **head))
            return await _answer(reader)
        finally:
            writer.close()
            await writer.wait_closed()


async def _served(node: DataPlaneNode, run: Callable[[], Awaitable[object]]) -> list[str]:
    """Warm up once, then ``ROUNDS`` runs with the collector off; the node's garbage."""
    await run()
    with _garbage_of_the_node() as found:
        for _ in range(ROUNDS):
            await run()
        # Handlers cancelled by a client that left finish on the loop, after the client.
        await eventually(lambda: not node._doors or not node._doors.http or not node._doors.http.connections)
    return found


async def _status(client: _Client, body: bytes, expected: int, **head: Any) -> None:
    assert await client.exchange(body, **head) == expected


@pytest.mark.parametrize(
    ("body", "key", "expected"),
    [
        pytest.param(orjson.dumps(CHAT), API_KEY, 200, id="served"),
        pytest.param(orjson.dumps(STREAM), API_KEY, 200, id="streamed"),
        pytest.param(b'{"model": "sim-fast", "messages": [' + b"x" * 50_000, API_KEY, 400, id="bad-json"),
        pytest.param(orjson.dumps({**CHAT, "temperature": "hot"}), API_KEY, 400, id="bad-field"),
        pytest.param(orjson.dumps(CHAT), "sk-not-a-key-0000000000", 401, id="unknown-key"),
        pytest.param(orjson.dumps({**CHAT, "model": "no-such-model"}), API_KEY, 404, id="unknown-model"),
    ],
)
async def test_requests_and_their_connections_leave_no_cycles(
    node: DataPlaneNode, body: bytes, key: str, expected: int
) -> None:
    client = _Client(node)
    assert await _served(node, lambda: _status(client, body, expected, key=key)) == []


async def test_a_connection_the_node_closes_leaves_no_cycles(node: DataPlaneNode) -> None:
    client = _Client(node)
    body = orjson.dumps(CHAT)
    assert await _served(node, lambda: _status(client, body, 200, close=True)) == []


async def test_an_upstream_failure_leaves_no_cycles(node: DataPlaneNode, simulator: Any) -> None:
    simulator.set_behaviour("sim-fast", Behaviour(fail_status=500))
    client = _Client(node)
    body = orjson.dumps(CHAT)
    assert await _served(node, lambda: _status(client, body, 502)) == []


async def test_an_upstream_that_dies_mid_stream_leaves_no_cycles(node: DataPlaneNode, simulator: Any) -> None:
    simulator.set_behaviour("sim-fast", Behaviour(drop_after_chunks=2))
    client = _Client(node)
    body = orjson.dumps(STREAM)
    assert await _served(node, lambda: _status(client, body, 200)) == []


async def test_a_client_that_leaves_mid_stream_leaves_no_cycles(node: DataPlaneNode, simulator: Any) -> None:
    simulator.set_behaviour("sim-fast", Behaviour(chunk_delay_ms=20))
    client = _Client(node)
    body = orjson.dumps(STREAM)

    async def leave() -> None:
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(_head(body))
        await reader.readuntil(b"\r\n\r\n")
        await reader.readuntil(b"\r\n")  # the first chunk's size: the answer is under way
        writer.close()
        await writer.wait_closed()

    assert await _served(node, leave) == []
