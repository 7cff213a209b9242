"""Node certificates, enrollment tokens and revocations are dated by the database's clock,
which every control-plane replica shares, not by a replica's own."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from dataplane.identity import CertificateRenewer, IdentityFiles
from signalbox.api.admin.v1 import admin_pb2
from tests.controlplane.conftest import Admin, SyncNode
from tests.controlplane.identity.test_sync_refusals import attempt_sync, revoke_while_not_listening
from tests.fixtures.postgres import (
    RunningControlPlane,
    cp_settings,
    running_control_plane,
    sql_rows,
)
from tests.helpers import eventually


async def test_a_replica_whose_clock_is_decades_behind_issues_certificates_that_work(
    database_url: str, private_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A replica's CA dated certificates by its host's clock, and enrollment tokens' expiry
    too (checked in SQL by the database's): a host booted at 1970 issued tokens expired on
    creation, and certificates expired on arrival; its renewals cut nodes off."""
    ttl = timedelta(days=3)
    async with running_control_plane(cp_settings(database_url, private_tmp, node_cert_ttl=ttl)) as running:
        identities = running.cp.identities
        assert identities is not None
        identities.host_clock = lambda: datetime.now(UTC) - timedelta(days=20_000)
        files = IdentityFiles(private_tmp / "dated-1")
        tls = await running.enroll("dated-1", files.directory)
        assert "this host's clock is -1728000" in caplog.text
        enrolled = files.certificate()
        assert enrolled is not None
        assert enrolled.not_valid_after_utc > datetime.now(UTC) + ttl - timedelta(minutes=1)
        received, code, _ = await attempt_sync(running.node_address, tls, "dated-1")
        assert (code, len(received)) == (grpc.StatusCode.OK, 1)

        renewed = await CertificateRenewer(
            files, target=running.node_address, node_id="dated-1", on_renewed=lambda: None
        ).renew_once()
        assert renewed.not_valid_after_utc > datetime.now(UTC) + ttl - timedelta(minutes=1)

        assert await identities.revoke("dated-1") == 2
        (revoked_at,) = {
            r for (r,) in sql_rows(running.database_url, "SELECT revoked_at FROM node_certificates")
        }
        assert abs((revoked_at - datetime.now(UTC)).total_seconds()) < 60, revoked_at

        async def refused() -> bool:
            received, code, _ = await attempt_sync(running.node_address, files.client_tls(), "dated-1")
            return not received and code != grpc.StatusCode.OK

        await eventually(refused, message="the revoked node refused")


async def test_a_replica_ahead_of_the_database_keeps_a_valid_certificates_stream_open(
    admin: Admin, control_plane: RunningControlPlane, private_tmp: Path
) -> None:
    """A stream ends when its certificate expires; the expiry is dated by the database's clock
    and was compared with the replica's own: a replica whose clock ran past a certificate's
    expiry ended its node's stream at once, and every reconnect after it."""
    sync = control_plane.cp.sync
    assert sync is not None
    tls = await control_plane.enroll("valid-1", private_tmp / "valid-1")
    cert = IdentityFiles(private_tmp / "valid-1").certificate()
    assert cert is not None
    ahead = cert.not_valid_after_utc - datetime.now(UTC) + timedelta(days=1)
    sync.clock = lambda: datetime.now(UTC) + ahead
    sync.recheck = 0.05
    node = await SyncNode(control_plane, "valid-1", tls).connect()
    try:
        first = node.verified(await node.next_envelope())
        await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="later"))
        assert node.verified(await node.next_envelope()).version == first.version + 1
        assert not node.ended.is_set()
    finally:
        await node.close()
    assert node.end_code == grpc.StatusCode.OK


async def test_a_replica_behind_the_database_ends_the_stream_of_a_lapsed_certificate(
    database_url: str, private_tmp: Path, caplog: pytest.LogCaptureFixture, clock_warnings: None
) -> None:
    """By its own clock a replica a day behind kept a lapsed certificate's stream open for a
    day more, sending it every new snapshot."""
    settings = cp_settings(database_url, private_tmp, node_cert_ttl=timedelta(seconds=2))
    async with running_control_plane(settings) as running:
        sync = running.cp.sync
        assert sync is not None
        sync.clock = lambda: datetime.now(UTC) - timedelta(days=1)
        sync.recheck = 0.05
        tls = await running.enroll("lapsed-1", private_tmp / "lapsed-1")
        node = await SyncNode(running, "lapsed-1", tls).connect()
        try:
            await asyncio.wait_for(node.ended.wait(), 10)
            assert node.end_code == grpc.StatusCode.UNAUTHENTICATED
        finally:
            await node.close()
    assert "this host's clock is -86400 s off the database's; node certificate expiries" in caplog.text


async def test_a_replica_ahead_of_the_database_still_ends_a_revoked_nodes_stream_after_listen_is_back(
    control_plane: RunningControlPlane,
    private_tmp: Path,
    caplog: pytest.LogCaptureFixture,
    clock_warnings: None,
) -> None:
    """A revocation notified while a replica's listening connection was down is looked up
    once it listens again, from shortly before the loss. The loss was dated by the replica's
    own clock and compared with ``revoked_at``, the database's: a replica an hour ahead
    looked for revocations made after (its) now, found none, and kept the revoked node's
    stream open, sending it every new snapshot."""
    broker = control_plane.cp.broker
    assert broker is not None
    broker.host_clock = lambda: datetime.now(UTC) + timedelta(hours=1)
    tls = await control_plane.enroll("ahead-1", private_tmp / "ahead-1")
    node = await SyncNode(control_plane, "ahead-1", tls).connect()
    try:
        await node.next_envelope()
        await revoke_while_not_listening(control_plane, node)
        assert "this host's clock is +3600 s off the database's; revocations missed" in caplog.text
    finally:
        await node.close()
