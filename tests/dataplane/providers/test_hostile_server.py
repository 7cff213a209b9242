"""The hostile upstream's behaviours for the deadline work: Retry-After and slow answers, per type."""

from __future__ import annotations

import time

import pytest

from dataplane.errors import RateLimited
from dataplane.providers.registry import BUILTIN_ADAPTERS
from dataplane.upstream import UpstreamClient

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
