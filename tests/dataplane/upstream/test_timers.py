"""The upstream connection's one timer: requests on a pooled connection do not each make and
cancel one, and every wait still times out at its own timeout, whichever came before it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dataplane.upstream import UpstreamClient
from dataplane.upstream import errors as upstream_errors
from dataplane.upstream.connection import Connection, Exchange

from .rawserver import Peer, RawServer, answer


def answering_then_stalling(answered: int) -> Any:
    """Answers the first ``answered`` requests on a connection, then says nothing."""

    async def handler(server: RawServer, peer: Peer) -> None:
        for _ in range(answered):
            request = await peer.request()
            assert request is not None
            server.requests.append(request)
            await peer.send(answer())
        await peer.request()
        await peer.wait_closed_by_client()

    return handler


async def call(client: UpstreamClient, url: str, timeout: float) -> bytes:
    response = await client.request("POST", url, body=b"x", timeout=timeout)
    try:
        data, _ = await response.read(1000)
        return data
    finally:
        response.close()


async def test_requests_on_a_pooled_connection_schedule_no_timer_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    scheduled: list[Any] = []
    call_at = loop.call_at

    def counting(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        if isinstance(getattr(callback, "__self__", None), (Connection, Exchange)):
            scheduled.append(callback)
        return call_at(when, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", counting)
    async with RawServer() as server, UpstreamClient() as client:
        for _ in range(50):
            assert await call(client, server.url, 5) == b'{"ok":true}'
        assert server.accepted == 1
    # Two waits a request (head, body), 100 in all: one timer, made for the first.
    assert len(scheduled) <= 2, scheduled


async def test_a_short_timeout_after_longer_ones_still_fires_at_its_own_time() -> None:
    async with RawServer(answering_then_stalling(10)) as server, UpstreamClient() as client:
        for _ in range(10):
            await call(client, server.url, 30)  # the pending timer is ~30 s away
        started = asyncio.get_running_loop().time()
        with pytest.raises(upstream_errors.ReadTimeout):
            await call(client, server.url, 0.2)
        assert asyncio.get_running_loop().time() - started < 10  # its 0.2 s, not the 30 s pending


async def test_a_long_timeout_after_a_short_one_waits_its_whole_time() -> None:
    async with RawServer(answering_then_stalling(1)) as server, UpstreamClient() as client:
        await call(client, server.url, 0.2)  # the pending timer fires at +0.2 s: early for the next
        started = asyncio.get_running_loop().time()
        with pytest.raises(upstream_errors.ReadTimeout):
            await call(client, server.url, 0.6)
        assert asyncio.get_running_loop().time() - started >= 0.6
