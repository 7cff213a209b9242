"""The hostile upstream's behaviours for the deadline work: Retry-After and slow answers, per type;
and error answers whose body is content-coded."""

from __future__ import annotations

import time

import pytest

from dataplane.errors import Overloaded, RateLimited, UpstreamProtocolError
from dataplane.providers.registry import BUILTIN_ADAPTERS
from dataplane.upstream import UpstreamClient

from .fakes import ABORT, HANG, FakeUpstream, Reply
from .hostile import HostileUpstream
from .samples import HELLO
from .streams import assemble, drain, make_adapter
from .test_cross_provider import WIRES

PATHS = {w.type_name: (w.path, w.settings) for w in WIRES}


@pytest.mark.parametrize("type_name", sorted(BUILTIN_ADAPTERS))
async def test_retry_after_and_slow_behaviours(type_name: str, client: UpstreamClient) -> None:
    async with HostileUpstream(type_name) as upstream:
        path, settings = PATHS[type_name]
        adapter = make_adapter(type_name, upstream.base_url + path, client, settings=settings)
        with pytest.raises(RateLimited) as caught:
            await adapter.complete("retry-after-31536000", HELLO, timeout=5)
        assert caught.value.retry_after is not None
        assert caught.value.retry_after > 0
        started = time.monotonic()
        folded = assemble(await drain(adapter.stream("slow-200", HELLO, timeout=5)))
        assert time.monotonic() - started >= 0.2
        assert folded.text == "Hello!"
        assert upstream.calls == {"retry-after-31536000": 1, "slow-200": 1}


async def test_an_error_answer_with_a_content_coded_body_is_still_classified_by_its_status(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    """A 429 or 503 whose (proxy-)gzipped body the node does not decode was refused whole as an
    undecodable body: a protocol error, which the breaker counts as a failure and is retried at
    once, where the status and its Retry-After say to wait."""
    gzipped = {"Content-Encoding": "gzip"}
    upstream.enqueue(
        Reply(status=429, body=(b"\x1f\x8b\x08\x00 not json",), headers={**gzipped, "Retry-After": "7"}),
        Reply(status=503, body=(b"\x1f\x8b\x08\x00",), headers=gzipped),
        Reply(body=(b"\x1f\x8b\x08\x00",), headers=gzipped),
    )
    adapter = make_adapter("openai", upstream.base_url, client)
    with pytest.raises(RateLimited) as caught:
        await adapter.complete("g", HELLO, timeout=5)
    assert caught.value.retry_after == 7
    with pytest.raises(Overloaded):
        await drain(adapter.stream("g", HELLO, timeout=5))
    # An answer (2xx) that is content-coded cannot be read: still malformed output.
    with pytest.raises(UpstreamProtocolError, match="undecodable body"):
        await adapter.complete("g", HELLO, timeout=5)


@pytest.mark.parametrize("end", [HANG, ABORT], ids=["stalls", "breaks-off"])
async def test_an_error_answer_whose_body_stalls_or_breaks_is_classified_by_its_status(
    upstream: FakeUpstream, client: UpstreamClient, end: object
) -> None:
    """A 429 whose body stalled after its head held the request for the provider's whole
    timeout and was then a timeout (one the breaker counts), its Retry-After lost; one whose
    connection broke mid-body was a transport failure."""
    for _ in range(2):
        upstream.enqueue(Reply(status=429, body=(b'{"error": {"mess', end), headers={"Retry-After": "3"}))
    adapter = make_adapter("openai", upstream.base_url, client)
    started = time.monotonic()
    with pytest.raises(RateLimited) as caught:
        await adapter.complete("g", HELLO, timeout=8)
    assert caught.value.retry_after == 3
    with pytest.raises(RateLimited):
        await drain(adapter.stream("g", HELLO, timeout=8), timeout=10)
    assert time.monotonic() - started < 7
