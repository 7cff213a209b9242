"""The node's ``/metrics`` endpoint on its own HTTP server, and the HTTP/1.1 reader worker 0
uses on the other workers' unix sockets: what a scraper and a hostile or broken peer get."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import httptools
import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client import exposition as prometheus_text

from dataplane.metrics_server import _Endpoint, _get_unix
from signalbox.metrics_http import OPENMETRICS
from signalbox.ports import free_port


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("bench_things", "Things.", registry=registry).inc(3)
    return registry


@pytest.fixture
async def endpoint(registry: CollectorRegistry) -> AsyncIterator[str]:
    served = _Endpoint(registry)
    await served.start(listen=f"127.0.0.1:{free_port()}")
    try:
        yield f"http://127.0.0.1:{served.port}"
    finally:
        await served.stop()


async def test_a_scrape_gets_either_format_and_nothing_else_is_served(endpoint: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{endpoint}/metrics") as text:
            assert text.status == 200
            assert text.headers["content-type"] == prometheus_text.CONTENT_TYPE_LATEST
            assert "bench_things_total 3.0" in await text.text()
        async with session.get(f"{endpoint}/metrics", headers={"accept": OPENMETRICS}) as open_metrics:
            assert open_metrics.headers["content-type"] == OPENMETRICS
            assert (await open_metrics.text()).endswith("# EOF\n")
        async with session.get(f"{endpoint}/admin") as elsewhere:
            assert elsewhere.status == 404
        async with session.post(f"{endpoint}/metrics", data=b"x") as posted:
            assert posted.status == 405
            assert posted.headers["allow"] == "GET"


async def test_worker_zero_reads_a_peer_over_its_unix_socket(
    registry: CollectorRegistry, tmp_path: Path
) -> None:
    path = tmp_path / "worker-1.sock"
    served = _Endpoint(registry)
    await served.start(unix=path)
    try:
        status, body = await _get_unix(path, "/metrics", OPENMETRICS, 1 << 20)
    finally:
        await served.stop()
    assert status == 200
    assert b"bench_things_total 3.0" in body


Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _peer(path: Path, answer: Answer) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await answer(reader, writer)
        writer.close()

    return await asyncio.start_unix_server(handle, str(path))


async def _garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"SMTP ready\r\n\r\n")
    await writer.drain()


async def _too_large(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000)
    await writer.drain()


async def _cut_short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
    await writer.drain()


@pytest.mark.parametrize(
    ("answer", "error", "message"),
    [
        (_garbage, httptools.HttpParserError, None),
        (_too_large, ValueError, "answered more than 1000 bytes"),
        (_cut_short, ValueError, "the answer was cut short"),
    ],
    ids=["not-http", "too-large", "cut-short"],
)
async def test_a_broken_peer_answer_is_an_error_not_a_hang(
    tmp_path: Path, answer: Answer, error: type[Exception], message: str | None
) -> None:
    path = tmp_path / "peer.sock"
    server = await _peer(path, answer)
    try:
        with pytest.raises(error, match=message):
            async with asyncio.timeout(5):
                await _get_unix(path, "/metrics", OPENMETRICS, 1000)
    finally:
        server.close()
        await server.wait_closed()
