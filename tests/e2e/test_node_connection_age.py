"""A node's connection to the control plane's node port ends at its age: the node comes back
through the handshake, re-syncs, and its evidence all arrives once."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dataplane.evidence.log import log_path
from dataplane.evidence.records import verify_chain
from signalbox.api.admin.v1 import admin_pb2
from signalbox.shell.simulator import Simulator
from tests.e2e.conftest import loopback_node
from tests.e2e.test_config_push import _admin, _converged, _seed
from tests.e2e.test_controlplane_killed import _counted_loop
from tests.fixtures.postgres import cp_settings, running_control_plane, sql_rows
from tests.helpers import eventually


async def test_node_connections_end_at_their_age_and_lose_no_evidence(
    database_url: str, private_tmp: Path, simulator: Simulator
) -> None:
    # There was no age on the node port: a node's connection, and its config and evidence
    # streams, lived as long as the process, so a certificate or CA no longer trusted was never
    # checked again (measured: one sync stream for the node's whole life, ``connects`` stayed 1).
    settings = cp_settings(database_url, private_tmp, node_connection_max_age=1.0, connection_age_grace=0.5)
    async with running_control_plane(settings) as plane, _admin(plane) as admin:
        api_key = await _seed(admin, simulator)
        node = await loopback_node(plane, "aged-1", private_tmp, evidence_ship_interval=0.1)
        await node.start()
        try:
            await _converged(admin, "aged-1")
            assert node.sync is not None
            assert node.shipper is not None
            sync, shipper = node.sync, node.shipper
            stop = asyncio.Event()
            answered = [0]
            load = asyncio.create_task(_counted_loop(node, api_key, stop, set(), answered))
            try:
                # Each stream lasts at most the age and its grace: a few of them come and go.
                await eventually(
                    lambda: sync.status.connects >= 4, timeout=30, message="the node reconnected"
                )
                # A change made now reaches the node over a stream opened after an age expired.
                await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="after-an-age"))
                await _converged(admin, "aged-1")
            finally:
                stop.set()
                failures = await load
            assert failures == []
            assert answered[0] > 0
            await eventually(
                lambda: shipper.status.shipped_seq == node.evidence.head.seq,
                timeout=30,
                message="every record acknowledged",
            )
        finally:
            await node.stop()
    head = verify_chain(log_path(node.settings.data_dir, "aged-1"))
    count, distinct = sql_rows(
        database_url,
        "SELECT count(*), count(DISTINCT (chain_id, seq)) FROM evidence_records WHERE node_id = 'aged-1'",
    )[0]
    # None lost, none stored twice, one per answered request.
    assert count == distinct == head.seq == answered[0]
