"""The broker's debounced reload never loses a change notified while it is reading."""

from __future__ import annotations

import asyncio

from controlplane.snapshots.broker import SnapshotBroker
from tests.helpers import eventually


async def test_a_change_notified_during_a_reload_gets_a_reload_of_its_own() -> None:
    broker = SnapshotBroker(sessions=None, listen_url="", debounce=0.0)  # type: ignore[arg-type]
    reading = asyncio.Event()
    release = asyncio.Event()
    reloads = 0

    async def refresh() -> None:
        # The first reload's read is in flight when the next change is notified: what it
        # reads may predate that change.
        nonlocal reloads
        reloads += 1
        if reloads == 1:
            reading.set()
            await release.wait()

    broker.refresh = refresh  # type: ignore[method-assign]
    broker.kick()
    await asyncio.wait_for(reading.wait(), 5)
    broker.kick()  # notified mid-read
    release.set()

    def reloaded_twice() -> bool:
        return reloads == 2

    await eventually(reloaded_twice, message="a second reload after the mid-read notification")
    pending = broker._pending
    assert pending is not None
    await asyncio.wait_for(pending, 5)
    assert reloads == 2, "a burst of notifications still costs one reload, not one each"
