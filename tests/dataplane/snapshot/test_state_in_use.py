"""A snapshot replaced while requests still run on it keeps its provider adapters open until
the last of them ends; then they are closed."""

from __future__ import annotations

import asyncio
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.app import DataPlaneNode
from tests.dataplane.conftest import envelope, snapshot
from tests.helpers import eventually


async def test_a_replaced_snapshot_closes_its_adapters_once_its_last_request_ends(
    serving_node: DataPlaneNode, simulator: Any, signing_key: Ed25519PrivateKey, monkeypatch: Any
) -> None:
    old = serving_node.store.current
    assert old is not None
    assert old.adapters
    closed: list[str] = []
    for provider_id, adapter in old.adapters.items():
        real = adapter.aclose

        async def recorded(provider_id: str = provider_id, real: Any = real) -> None:
            closed.append(provider_id)
            await real()

        monkeypatch.setattr(adapter, "aclose", recorded)
    with old.use() as held, old.use():  # two requests on it
        assert held is old
        new = envelope(snapshot(2, simulator.base_url, default_model="sim-smart"), signing_key)
        assert (await serving_node.store.apply(new)).accepted
        assert serving_node.store.current is not old
        for _ in range(50):  # the closer runs as soon as it may: give it every chance
            await asyncio.sleep(0)
        assert closed == []
    await eventually(lambda: sorted(closed) == sorted(old.adapters), message="old adapters closed")


async def test_a_request_that_fails_still_lets_its_snapshot_close(
    serving_node: DataPlaneNode, simulator: Any, signing_key: Ed25519PrivateKey
) -> None:
    old = serving_node.store.current
    assert old is not None
    try:
        with old.use():
            new = envelope(snapshot(2, simulator.base_url), signing_key)
            assert (await serving_node.store.apply(new)).accepted
            raise RuntimeError("the request failed")
    except RuntimeError:
        pass
    await eventually(old._idle.is_set, message="the old snapshot idle")
