"""The gRPC door's stream relay (``dataplane.api.relay``): the pipeline's events read ahead of
the writes, chunks ready together given as one, nothing held back, read-ahead bounded, the end
(a refusal, the caller leaving) in order; and ``deltas_to_proto``, which merges them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import pytest

from dataplane.api import relay
from dataplane.api.relay import coalesced
from dataplane.chat import StreamChunk, ToolCallDelta
from dataplane.edge.infer import deltas_to_proto
from tests.helpers import eventually

OPENED, CLOSED = object(), object()
"""Stand-ins for the pipeline's ``Opened`` and ``Closed``: the relay passes them on as they are."""


async def _texts(relayed: AsyncIterator[Any]) -> list[str]:
    """The texts of the next batch the relay gives."""
    batch = await asyncio.wait_for(anext(relayed), 5)
    return [chunk.text for chunk in batch]


async def _slow_door(events: AsyncIterator[Any], produced: asyncio.Event) -> list[Any]:
    """What a door that is slower than the upstream gets: the first event at once, then (as
    if its write took until the upstream had said everything, ``produced``) the rest."""
    relayed = coalesced(events)
    try:
        items = [await asyncio.wait_for(anext(relayed), 5)]
        await asyncio.wait_for(produced.wait(), 5)
        return items + [item async for item in relayed]
    finally:
        await relayed.aclose()


async def test_chunks_ready_together_are_given_together() -> None:
    """The first chunk of a burst goes at once; those that arrive while it is written, together."""
    produced = asyncio.Event()

    async def burst() -> AsyncGenerator[Any, None]:
        yield OPENED
        for word in ("one ", "two ", "three"):
            yield StreamChunk(text=word)
        produced.set()
        yield CLOSED

    items = await _slow_door(burst(), produced)
    assert items[0] is OPENED
    assert items[-1] is CLOSED
    (batch,) = items[1:-1]
    assert [chunk.text for chunk in batch] == ["one ", "two ", "three"]


async def test_the_first_chunk_is_not_held_behind_the_rest_of_its_burst() -> None:
    produced = asyncio.Event()

    async def burst() -> AsyncGenerator[Any, None]:
        for word in ("one ", "two ", "three"):
            yield StreamChunk(text=word)
        produced.set()

    items = await _slow_door(burst(), produced)
    assert [[chunk.text for chunk in batch] for batch in items] == [["one "], ["two ", "three"]]


async def test_a_burst_is_read_a_few_chunks_a_turn() -> None:
    """Other requests run between every TURN chunks of a burst: one stream's read-ahead does not
    hold every other stream's first token behind the pipeline's work on all of it."""
    ticks = 0
    produced = asyncio.Event()
    turns: list[int] = []

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async def burst() -> AsyncGenerator[Any, None]:
        for _ in range(relay.READ_AHEAD - 4):
            turns.append(ticks)
            yield StreamChunk(text="x")
        produced.set()

    other = asyncio.create_task(ticker())
    try:
        batches = await _slow_door(burst(), produced)
    finally:
        other.cancel()
    assert sum(len(batch) for batch in batches) == relay.READ_AHEAD - 4
    longest = max(turns.count(tick) for tick in set(turns))
    assert longest <= relay.TURN


async def test_a_chunk_that_comes_alone_goes_at_once() -> None:
    """Nothing waits to be merged: each chunk reaches the door before the next is produced."""
    produce = asyncio.Event()
    produced: list[str] = []

    async def paced() -> AsyncGenerator[Any, None]:
        for word in ("one", "two", "three"):
            await produce.wait()
            produce.clear()
            produced.append(word)
            yield StreamChunk(text=word)

    relayed = coalesced(paced())
    try:
        for word in ("one", "two", "three"):
            produce.set()
            assert await _texts(relayed) == [word]
            assert produced[-1] == word  # given before the next one exists
    finally:
        await relayed.aclose()


async def test_reading_ahead_stops_at_its_bound_while_the_door_does_not_write() -> None:
    """A client that does not read holds the upstream back: at most READ_AHEAD events are read."""
    produced = 0

    async def endless() -> AsyncGenerator[Any, None]:
        nonlocal produced
        while True:
            produced += 1
            yield StreamChunk(text="x")
            await asyncio.sleep(0)

    relayed = coalesced(endless())
    try:
        await anext(relayed)  # the reading has begun; the door now writes nothing more
        await eventually(lambda: produced >= relay.READ_AHEAD)
        settled = produced
        for _ in range(50):
            await asyncio.sleep(0)
        assert produced == settled <= relay.READ_AHEAD + 1
    finally:
        await relayed.aclose()


async def test_an_error_reaches_the_door_after_the_events_before_it() -> None:
    class Refusal(Exception):
        pass

    async def refusing() -> AsyncGenerator[Any, None]:
        yield OPENED
        yield StreamChunk(text="partial")
        raise Refusal("upstream gone")

    relayed = coalesced(refusing())
    items: list[Any] = []

    async def read() -> None:
        async for item in relayed:
            items.append(item)

    with pytest.raises(Refusal, match="upstream gone"):
        await read()
    assert items[0] is OPENED
    assert [chunk.text for chunk in items[1]] == ["partial"]


async def test_the_door_leaving_cancels_the_step_the_pipeline_is_in() -> None:
    """As before the relay: the pipeline's step is cancelled (it closes the upstream and
    records the request CANCELLED), and the events are left alone for the door to close."""
    waiting, cancelled = asyncio.Event(), asyncio.Event()

    async def stalls() -> AsyncGenerator[Any, None]:
        yield StreamChunk(text="first")
        try:
            waiting.set()
            await asyncio.Event().wait()  # an upstream that says nothing more
        except asyncio.CancelledError:
            cancelled.set()
            raise
        yield StreamChunk(text="never")

    events = stalls()
    relayed = coalesced(events)
    assert await _texts(relayed) == ["first"]
    await asyncio.wait_for(waiting.wait(), 5)
    await relayed.aclose()
    assert cancelled.is_set()
    await events.aclose()  # not "already running": the reading task is done


async def test_the_door_cancelled_mid_write_stops_the_reading() -> None:
    """The handler task cancelled (the client gone) while it waits for the next event."""
    cancelled = asyncio.Event()

    async def stalls() -> AsyncGenerator[Any, None]:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        yield StreamChunk(text="never")

    events = stalls()

    async def door() -> None:
        relayed = coalesced(events)
        try:
            async for _ in relayed:
                pass
        finally:
            await relayed.aclose()

    task = asyncio.create_task(door())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled.is_set()
    await events.aclose()


async def test_a_reading_cancelled_from_within_ends_the_door_instead_of_leaving_it_waiting() -> None:
    async def cancelled() -> AsyncGenerator[Any, None]:
        yield StreamChunk(text="first")
        await asyncio.sleep(0)
        raise asyncio.CancelledError

    relayed = coalesced(cancelled())
    try:
        assert await _texts(relayed) == ["first"]
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(anext(relayed), 5)
    finally:
        await relayed.aclose()


async def test_a_merged_delta_stays_within_its_size() -> None:
    piece = "y" * 6000
    produced = asyncio.Event()

    async def big() -> AsyncGenerator[Any, None]:
        for _ in range(6):
            yield StreamChunk(text=piece)
        produced.set()

    batches = await _slow_door(big(), produced)
    assert all(sum(len(c.text) for c in batch) <= relay.MERGED_CHARS for batch in batches)
    assert [len(batch) for batch in batches] == [1, 2, 2, 1]


async def test_events_that_are_not_chunks_are_never_merged() -> None:
    produced = asyncio.Event()

    async def mixed() -> AsyncGenerator[Any, None]:
        yield StreamChunk(text="a")
        yield OPENED
        yield StreamChunk(text="b")
        yield StreamChunk(text="c")
        produced.set()
        yield CLOSED

    items = await _slow_door(mixed(), produced)
    assert [item if item in (OPENED, CLOSED) else [c.text for c in item] for item in items] == [
        ["a"],
        OPENED,
        ["b", "c"],
        CLOSED,
    ]


def test_deltas_to_proto_joins_text_and_continues_tool_calls() -> None:
    chunks = [
        StreamChunk(text="Let me "),
        StreamChunk(text="check.", tool_calls=(ToolCallDelta(0, id="call_1", name="lookup"),)),
        StreamChunk(tool_calls=(ToolCallDelta(0, arguments_fragment='{"q": '),)),
        StreamChunk(tool_calls=(ToolCallDelta(0, arguments_fragment='"x"}'),)),
        StreamChunk(tool_calls=(ToolCallDelta(1, id="call_2", name="send", arguments_fragment="{"),)),
        StreamChunk(tool_calls=(ToolCallDelta(1, arguments_fragment="}"),)),
    ]
    delta = deltas_to_proto(chunks).delta
    assert delta.text == "Let me check."
    assert [(c.index, c.id, c.name, c.arguments_fragment) for c in delta.tool_calls] == [
        (0, "call_1", "lookup", '{"q": "x"}'),
        (1, "call_2", "send", "{}"),
    ]


def test_deltas_to_proto_of_one_chunk_is_that_chunk() -> None:
    chunk = StreamChunk(text="only", tool_calls=(ToolCallDelta(2, arguments_fragment="[1]"),))
    delta = deltas_to_proto([chunk]).delta
    assert delta.text == "only"
    assert [(c.index, c.arguments_fragment) for c in delta.tool_calls] == [(2, "[1]")]
