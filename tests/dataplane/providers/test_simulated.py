"""The ``simulated`` adapter against the real built-in simulator (``signalbox.shell.simulator``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from dataplane.chat import ChatRequest, EmbedRequest, FinishReason, ToolChoice
from dataplane.errors import RateLimited
from dataplane.providers.base import ProviderAdapter
from dataplane.upstream import UpstreamClient
from signalbox.shell.simulator import Behaviour, Simulator

from .samples import ASK_WEATHER, HELLO, user
from .streams import assemble, drain, make_adapter


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    async with Simulator() as sim:
        yield sim


def simulated(sim: Simulator, client: UpstreamClient) -> ProviderAdapter:
    return make_adapter("simulated", sim.base_url + "/v1", client)


async def test_plain_and_streamed_answers_agree(simulator: Simulator, client: UpstreamClient) -> None:
    adapter = simulated(simulator, client)
    plain = await adapter.complete("sim-fast", HELLO, timeout=5)
    streamed = assemble(await drain(adapter.stream("sim-fast", HELLO, timeout=5)))
    assert plain.message.text
    assert streamed.text == plain.message.text
    assert plain.finish_reason is streamed.finish_reason is FinishReason.STOP
    assert plain.usage is not None
    assert streamed.usage == plain.usage  # we ask for include_usage, so the usage chunk comes


async def test_tool_call_plain_and_streamed(simulator: Simulator, client: UpstreamClient) -> None:
    adapter = simulated(simulator, client)
    request = ChatRequest(
        messages=(user("Weather in Paris?"),),
        tools=ASK_WEATHER.tools,
        tool_choice=ToolChoice(mode="required"),
    )
    plain = await adapter.complete("sim-fast", request, timeout=5)
    streamed = assemble(await drain(adapter.stream("sim-fast", request, timeout=5)))
    [call] = plain.message.tool_calls
    assert plain.finish_reason is FinishReason.TOOL_CALLS
    assert streamed.tool_calls == {0: {"id": call.id, "name": "get_weather", "arguments": call.arguments}}
    assert streamed.finish_reason is FinishReason.TOOL_CALLS


async def test_embeddings(simulator: Simulator, client: UpstreamClient) -> None:
    result = await simulated(simulator, client).embed("sim-embed", EmbedRequest(inputs=("a", "b")), timeout=5)
    assert len(result.vectors) == 2
    assert len(result.vectors[0]) > 0


async def test_simulated_rate_limit(simulator: Simulator, client: UpstreamClient) -> None:
    simulator.set_behaviour("sim-fast", Behaviour(fail_status=429, retry_after=2))
    with pytest.raises(RateLimited) as caught:
        await simulated(simulator, client).complete("sim-fast", HELLO, timeout=5)
    assert caught.value.retry_after == 2.0
