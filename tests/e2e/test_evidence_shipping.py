"""Evidence shipping end to end: a real node under load ships its records over the node port
(mutual TLS) while the control plane goes away and comes back; every record arrives once. A
node that stops sends the rest, its last checkpoint included, before it exits; without a
control plane its stop does not wait for one."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from dataplane.app import DataPlaneNode
from dataplane.evidence.log import log_path
from dataplane.evidence.records import verify_chain
from dataplane.evidence.shipper import cursor_path, read_cursor
from signalbox.shell.simulator import Simulator
from tests.controlplane.conftest import Admin
from tests.e2e.conftest import loopback_node
from tests.e2e.test_config_push import _admin, _converged, _infer, _seed
from tests.e2e.test_controlplane_killed import _counted_loop, _free_port
from tests.fixtures.postgres import RunningControlPlane, cp_settings, running_control_plane, sql_rows
from tests.helpers import eventually


async def test_records_made_while_the_control_plane_is_down_all_ship_once_on_reconnect(
    database_url: str, private_tmp: Path, simulator: Simulator
) -> None:
    listen, node_listen = f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"
    settings = cp_settings(database_url, private_tmp, listen=listen, node_listen=node_listen)

    def stored() -> tuple[int, int]:
        row = sql_rows(
            database_url, "SELECT count(*), count(DISTINCT (chain_id, seq)) FROM evidence_records"
        )[0]
        return int(row[0]), int(row[1])

    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(running_control_plane(settings))
        async with _admin(first) as admin:
            api_key = await _seed(admin, simulator)
            node = await loopback_node(first, "ship-1", private_tmp, sync_backoff_cap=0.3)
            await node.start()
            stack.push_async_callback(node.stop)
            await _converged(admin, "ship-1")
        assert node.shipper is not None
        shipper = node.shipper

        stop = asyncio.Event()
        answered = [0]
        load = asyncio.create_task(_counted_loop(node, api_key, stop, set(), answered))
        try:
            await eventually(lambda: shipper.status.shipped_seq >= 50, message="records shipped under load")
            await first.cp.stop()
            await eventually(lambda: not shipper.status.connected, message="the shipper to notice")
            down_at = node.evidence.head.seq
            await eventually(
                lambda: node.evidence.head.seq > down_at + 200, message="records made while down"
            )
            async with running_control_plane(settings):
                await eventually(lambda: shipper.status.connected, message="the shipper to reconnect")
                stop.set()
                failures = await load
                assert failures == []
                await eventually(
                    lambda: shipper.status.shipped_seq == node.evidence.head.seq,
                    timeout=30,
                    message="every record acknowledged",
                )
                count, distinct = stored()
                # The node's signed checkpoints travel with its records and verify against
                # the key of the certificate it presented (the production check).
                await eventually(
                    lambda: sql_rows(database_url, "SELECT count(*) FROM evidence_checkpoints")[0][0] > 0,
                    timeout=30,
                    message="a signed checkpoint stored",
                )
        finally:
            stop.set()
            await asyncio.gather(load, return_exceptions=True)

    head = verify_chain(log_path(node.settings.data_dir, "ship-1"))
    # None lost, none stored twice, one per answered request; the cursor is the ACK.
    assert count == distinct == head.seq == answered[0]
    assert read_cursor(cursor_path(log_path(node.settings.data_dir, "ship-1"), "ship-1/0")).seq == head.seq


async def _node_that_served(
    plane: RunningControlPlane,
    admin: Admin,
    simulator: Simulator,
    private_tmp: Path,
    node_id: str,
    requests: int,
    **overrides: object,
) -> DataPlaneNode:
    """A started node, converged, that answered ``requests`` calls; its evidence batches an
    hour apart (only the first read, or the stop's drain, sends any)."""
    api_key = await _seed(admin, simulator)
    node = await loopback_node(plane, node_id, private_tmp, evidence_ship_interval=3600, **overrides)
    await node.start()
    try:
        await _converged(admin, node_id)
        for _ in range(requests):
            await _infer(node, api_key)
    except BaseException:
        await node.stop()
        raise
    return node


async def test_a_stopping_node_ships_the_rest_and_its_last_checkpoint_before_it_exits(
    database_url: str, private_tmp: Path, simulator: Simulator
) -> None:
    """Batches and checkpoints an hour apart: the checkpoint the log signs as it closes, and
    whatever the one batch sent before did not hold, reach the control plane only through
    the stop's drain. A node scaled away with its disk would otherwise take them along."""
    async with running_control_plane(cp_settings(database_url, private_tmp)) as plane, _admin(plane) as admin:
        node = await _node_that_served(
            plane, admin, simulator, private_tmp, "drain-1", 6, evidence_checkpoint_interval=3600
        )
        await node.stop()
    head = node.evidence.head.seq
    assert head >= 6
    assert node.evidence.signed_size == head
    assert sql_rows(
        database_url, "SELECT count(*), max(seq) FROM evidence_records WHERE node_id = 'drain-1'"
    ) == [(head, head)]
    assert sql_rows(
        database_url,
        "SELECT max(tree_size), bool_and(root_matches) FROM evidence_checkpoints WHERE chain_id = 'drain-1/0'",
    ) == [(head, True)]


async def test_a_node_stopping_without_its_control_plane_leaves_the_rest_for_its_next_start(
    database_url: str, private_tmp: Path, simulator: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    """The drain waits only while the stream is up: with an hour allowed and the control plane
    gone, the stop still ends (a hang here is the test's timeout) and says what is left."""
    async with running_control_plane(cp_settings(database_url, private_tmp)) as plane, _admin(plane) as admin:
        node = await _node_that_served(
            plane, admin, simulator, private_tmp, "drain-2", 1, evidence_drain=3600
        )
        assert node.shipper is not None
        shipper = node.shipper
        # Idle between batches, the shipper learns the stream is gone when the drain sends on it.
        try:
            await plane.cp.stop()
        finally:
            with caplog.at_level(logging.WARNING, logger="signalbox.dataplane"):
                await node.stop()
    head, signed = node.evidence.head.seq, node.evidence.signed_size
    assert signed == head
    assert shipper.status.proven_seq < signed  # the closing checkpoint never left
    (warning,) = [r.getMessage() for r in caplog.records if "not all acknowledged" in r.getMessage()]
    assert warning.startswith(
        f"stopping: evidence drain-2/0 not all acknowledged (records up to seq {shipper.status.shipped_seq} "
        f"of {head}, checkpoint of {shipper.status.proven_seq} of {signed}); the rest stays in "
    )
    assert warning.endswith(" and ships when the node starts again")
    # Still on disk, gap-free, for that next start.
    assert verify_chain(log_path(node.settings.data_dir, "drain-2")).seq == head
