"""The node's shared HTTP client behaves like httpx's own over real local servers,
whichever transport carries it: bodies, headers, streaming, decoding and errors."""

from __future__ import annotations

import asyncio
import gzip
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from dataplane.http_client import TransportName, build_http_client


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "body": body.decode(),
                "authorization": request.headers.get("authorization", ""),
                "cookie": request.headers.get("cookie", ""),
            }
        )

    async def gzipped(request: web.Request) -> web.Response:
        return web.Response(body=gzip.compress(b'{"ok": true}'), headers={"content-encoding": "gzip"})

    async def lines(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for i in range(3):
            await response.write(f"data: {i}\n\n".encode())
        return response

    done = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await done.wait()  # answers only at teardown
        return web.Response(text="late")

    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-length": "100"})
        await response.prepare(request)
        await response.write(b"only part")
        assert request.transport is not None
        request.transport.close()
        return response

    async def set_cookie(request: web.Request) -> web.Response:
        response = web.Response(text="ok")
        response.set_cookie("session", "tenant-a-secret")
        return response

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("/echo")

    app = web.Application()
    app.router.add_post("/echo", echo)
    app.router.add_get("/gzip", gzipped)
    app.router.add_get("/lines", lines)
    app.router.add_get("/slow", slow)
    app.router.add_get("/cut", cut)
    app.router.add_get("/moved", moved)
    app.router.add_get("/set-cookie", set_cookie)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    done.set()
    await runner.cleanup()


TRANSPORTS: list[TransportName] = ["aiohttp", "httpx"]


@pytest.fixture(params=TRANSPORTS)
async def client(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    async with build_http_client(transport=request.param) as c:
        yield c


async def test_json_post_with_headers(client: httpx.AsyncClient, server: str) -> None:
    response = await client.post(f"{server}/echo", json={"a": 1}, headers={"Authorization": "Bearer k"})
    assert response.status_code == 200
    assert response.json() == {"body": '{"a":1}', "authorization": "Bearer k", "cookie": ""}


async def test_gzip_body_is_decoded(client: httpx.AsyncClient, server: str) -> None:
    assert (await client.get(f"{server}/gzip")).json() == {"ok": True}


async def test_streamed_lines(client: httpx.AsyncClient, server: str) -> None:
    async with client.stream("GET", f"{server}/lines") as response:
        got = [line async for line in response.aiter_lines() if line]
    assert got == ["data: 0", "data: 1", "data: 2"]


async def test_redirects_are_not_followed(client: httpx.AsyncClient, server: str) -> None:
    assert (await client.get(f"{server}/moved")).status_code == 302


async def test_read_timeout(client: httpx.AsyncClient, server: str) -> None:
    with pytest.raises(httpx.ReadTimeout):
        await client.get(f"{server}/slow", timeout=0.2)


async def test_connection_refused(client: httpx.AsyncClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        await client.get(f"http://127.0.0.1:{port}/")


async def test_body_cut_short(client: httpx.AsyncClient, server: str) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        await client.get(f"{server}/cut")


async def test_cookies_set_by_an_upstream_are_not_sent_on_later_calls(
    client: httpx.AsyncClient, server: str
) -> None:
    first = await client.get(f"{server}/set-cookie")
    assert first.headers["set-cookie"].startswith("session=")
    echoed = await client.post(f"{server}/echo", content=b"x")
    assert echoed.json()["cookie"] == ""
