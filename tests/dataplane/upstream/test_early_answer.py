"""An upstream that answers before it has read the request's body: the connection is not reused.

What it makes of the bytes it had not read when it answered is unknown: it may read them as the
next request, whose answer (a 400 for garbage, or nothing) would then be taken for the answer
to whatever request the node sent next on that connection, another tenant's perhaps. Such a
connection is closed once its answer is in, as when the upstream asks for it."""

from __future__ import annotations

from dataplane.upstream import UpstreamClient

from .rawserver import JSON, Peer, RawServer, answer, post

BIG = b'{"q":"' + b"x" * (32 << 20) + b'"}'
"""Far more than loopback socket buffers hold: most of it is still the client's to send when
the answer comes."""


async def answers_before_reading(server: RawServer, peer: Peer) -> None:
    """The first connection: answer the head at once, then drain whatever comes until the client
    leaves (a reused connection's next request is never answered). Later ones: answer all."""
    if peer.number > 1:
        while (request := await peer.request()) is not None:
            server.requests.append(request)
            await peer.send(answer())
        return
    await peer.reader.readuntil(b"\r\n\r\n")
    await peer.send(answer(b'{"early":true}'))
    await peer.wait_closed_by_client()


async def test_a_connection_answered_before_its_request_was_sent_whole_is_not_reused(
    client: UpstreamClient,
) -> None:
    async with RawServer(answers_before_reading) as server:
        response = await client.request("POST", server.url, headers=JSON, body=BIG, timeout=5)
        assert await response.read(100) == (b'{"early":true}', False)
        response.close()
        assert client.idle_connections == 0
        assert await post(client, server.url, timeout=2) == b'{"ok":true}'
    assert server.accepted == 2


async def test_an_interim_answer_before_the_body_is_sent_leaves_the_connection_reusable(
    client: UpstreamClient,
) -> None:
    """A ``100 Continue`` unasked, while the body is on its way: the final answer comes after the
    whole body was read, so the connection is as good as any."""

    async def continues(server: RawServer, peer: Peer) -> None:
        while (head := await peer.reader.readuntil(b"\r\n\r\n")) is not None:
            await peer.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            length = int(
                next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))[15:]
            )
            await peer.reader.readexactly(length)
            await peer.send(answer())

    async with RawServer(continues) as server:
        response = await client.request("POST", server.url, headers=JSON, body=BIG, timeout=5)
        assert await response.read(100) == (b'{"ok":true}', False)
        response.close()
        assert await post(client, server.url, timeout=2) == b'{"ok":true}'
    assert server.accepted == 1
