"""An upstream error answer its adapter's reader cannot make sense of is a failed attempt like
any other: the dispatcher falls back to the next deployment, plainly and streamed. Before, the
reader's exception escaped the adapter, the dispatcher re-raised it, and the caller got INTERNAL
with no fallback tried."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from dataplane.chat import StreamChunk
from dataplane.routing.candidate import Candidate
from dataplane.routing.dispatch import Dispatcher
from dataplane.upstream import UpstreamClient
from signalbox.shell.simulator import Simulator
from tests.dataplane.providers.fakes import FakeUpstream, raw_reply
from tests.dataplane.routing.support import HELLO
from tests.dataplane.routing.test_dispatch import outcomes, rules
from tests.dataplane.routing.test_slow_deployments import Pair

UNREADABLE = '{"type": "error", "error": "not an object"}'
"""Anthropic's error envelope around an error that is not the object its reader expects."""


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as upstream:
        yield upstream


@pytest.mark.parametrize("status", [200, 500], ids=["in-band", "error-status"])
async def test_an_unreadable_error_body_is_a_failed_attempt_that_falls_back(
    sim_b: Simulator, http: UpstreamClient, fake: FakeUpstream, status: int
) -> None:
    pair = Pair(
        fake.base_url,
        sim_b,
        http,
        rules("first", "second", retry={"attempts_per_deployment": 1}),
        Dispatcher(),
        first_type="anthropic",
    )
    fake.enqueue(raw_reply(UNREADABLE, status=status), raw_reply(UNREADABLE, status=status))
    result, candidate, attempts = await pair.dispatcher.call(
        pair.plan("r1"), pair.attempt, deadline=time.monotonic() + 5
    )
    assert candidate.key == "second-2"
    assert result.message.text
    assert outcomes(attempts) == [("first-1", "server_error"), ("second-2", "ok")]

    def start(candidate: Candidate, remaining: float) -> AsyncIterator[StreamChunk]:
        adapter = pair.adapters[candidate.provider.id]
        return adapter.stream(candidate.deployment.upstream_model, HELLO, timeout=remaining)

    first, rest, candidate, attempts = await pair.dispatcher.open_stream(
        pair.plan("r2"), start, deadline=time.monotonic() + 5
    )
    text = first.text + "".join([chunk.text async for chunk in rest])
    assert text
    assert candidate.key == "second-2"
    assert outcomes(attempts) == [("first-1", "server_error"), ("second-2", "ok")]
    assert len(fake.requests) == 2
    health = pair.dispatcher.health.get("first-1")
    assert health is not None
    assert health.error_rate > 0, "the breaker counts the failures"
