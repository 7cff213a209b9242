"""Node identity end to end: revocation across replicas, renewal before expiry, a real node
process that enrolls without its token showing anywhere, and a node that refuses to start
without an identity."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from controlplane.services.identity import TOKEN_PREFIX
from dataplane.app import DataPlaneNode
from dataplane.config.model import Scope
from dataplane.identity import CertificateRenewer, IdentityFiles, NodeIdentityError
from dataplane.node_settings import NodeSettings
from signalbox.api.admin.v1 import admin_pb2
from signalbox.shell.admin_cli.output import node_row
from signalbox.tls import ClientTls
from tests.controlplane.conftest import Admin
from tests.e2e.test_config_push import _admin
from tests.fixtures.postgres import RunningControlPlane, cp_settings, running_control_plane
from tests.helpers import eventually


def _settings(running: RunningControlPlane, node_id: str, private_tmp: Path, **link: object) -> NodeSettings:
    values: dict[str, object] = {
        "listen": "127.0.0.1:0",
        "trust_keys": (running.trust_key_path,),
        "node_id": node_id,
        "data_dir": Path(tempfile.mkdtemp(prefix=f"{node_id}-", dir=private_tmp)),
        "drain_seconds": 1.0,
        "sync_backoff_base": 0.05,
        "sync_backoff_cap": 0.2,
        **link,
    }
    return NodeSettings(**values)  # type: ignore[arg-type]


async def _listed(admin: Admin, node_id: str) -> admin_pb2.Node:
    for node in (await admin.ListNodes(admin_pb2.ListNodesRequest())).nodes:
        if node.node_id == node_id:
            return node
    raise AssertionError(f"{node_id} not listed")


async def test_a_revoked_node_is_cut_off_on_every_replica_and_keeps_serving(
    control_plane: RunningControlPlane, admin: Admin, private_tmp: Path
) -> None:
    # The node syncs with replica B; the revocation is made through replica A.
    settings = cp_settings(control_plane.database_url, private_tmp, kek_file=control_plane.data_dir / "kek")
    async with running_control_plane(settings) as replica:
        link = await replica.node_link()
        async with DataPlaneNode(_settings(replica, "rev-1", private_tmp, **link)) as node:
            sync = node.sync
            replica_sync = replica.cp.sync
            assert sync is not None
            assert replica_sync is not None
            assert node.renewer is not None
            served = (await node.wait_for_version(1)).config.version
            await eventually(lambda: "rev-1" in replica_sync.streams, message="rev-1 streaming on replica B")
            listed = await _listed(admin, "rev-1")
            assert listed.HasField("cert_not_after")
            assert not listed.revoked

            revoked = await admin.RevokeNode(admin_pb2.RevokeNodeRequest(node_id="rev-1"))
            assert revoked.revoked_certificates == 1
            await eventually(
                lambda: "rev-1" not in replica_sync.streams, timeout=3, message="stream closed within 3s"
            )
            # It cannot come back: every reconnect is refused, on either replica.
            await eventually(
                lambda: sync.status.failures >= 3 and "PERMISSION_DENIED" in sync.status.last_error,
                message="reconnects refused",
            )
            assert "rev-1" not in replica_sync.streams
            assert control_plane.cp.sync is not None
            assert "rev-1" not in control_plane.cp.sync.streams
            # Nor renew its certificate.
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await node.renewer.renew_once()
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            # It keeps serving its last-known-good.
            assert node.store.version == served
            assert node.store.current is not None

            listed = await _listed(admin, "rev-1")
            assert listed.revoked
            assert node_row(listed)[-1].startswith("revoked ")

    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await admin.RevokeNode(admin_pb2.RevokeNodeRequest(node_id="never-enrolled"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert (unknown.value.details() or "").startswith("node_id: enrolled node 'never-enrolled' not found")


async def test_a_node_renews_before_expiry_and_stays_connected_and_current(
    database_url: str, private_tmp: Path
) -> None:
    settings = cp_settings(database_url, private_tmp, node_cert_ttl=timedelta(seconds=3))
    async with running_control_plane(settings) as running, _admin(running) as admin:  # noqa: SIM117 (the node needs the running control plane's link)
        async with DataPlaneNode(
            _settings(running, "renew-1", private_tmp, **await running.node_link())
        ) as node:
            renewer = node.renewer
            assert renewer is not None
            first = node.identity.certificate()
            assert first is not None
            await node.wait_for_version(1)
            # Well past the first certificate's expiry, through two renewals.
            await eventually(
                lambda: renewer.renewals >= 2 and datetime.now(UTC) > first.not_valid_after_utc,
                timeout=15,
                message="two renewals and the first certificate expired",
            )
            current = node.identity.certificate()
            assert current is not None
            assert current.serial_number != first.serial_number
            assert current.not_valid_after_utc > first.not_valid_after_utc
            assert node.identity.problem("renew-1") == ""
            assert (node.identity.cert.stat().st_mode & 0o777) == 0o600
            # Still syncing: a change made now reaches the node.
            await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="after-renewal"))
            latest = await admin.latest_version()
            await node.wait_for_version(latest, timeout=10)
            assert node.store.current is not None


async def test_a_node_without_identity_or_token_refuses_to_start(
    control_plane: RunningControlPlane, private_tmp: Path
) -> None:
    settings = _settings(control_plane, "nobody", private_tmp, control_plane=control_plane.node_address)
    with pytest.raises(NodeIdentityError, match=r"no node certificate in .*: give --enroll-token"):
        await DataPlaneNode(settings).start()
    bad = _settings(
        control_plane,
        "nobody",
        private_tmp,
        control_plane=control_plane.node_address,
        enroll_address=control_plane.address,
        enroll_token="sbx_enroll_0123456789abcdef_" + "A" * 43,
    )
    with pytest.raises(NodeIdentityError, match="rejected the enrollment token"):
        await DataPlaneNode(bad).start()
    # With --insecure the node would sync in plaintext, which this control plane refuses.
    insecure = _settings(
        control_plane,
        "nobody",
        private_tmp,
        control_plane=control_plane.node_address,
        control_plane_tls=ClientTls(insecure=True),
    )
    async with DataPlaneNode(insecure) as node:
        sync = node.sync
        assert sync is not None
        await eventually(lambda: sync.status.failures >= 2, message="plaintext sync refused")
        assert not sync.status.connected


async def test_a_node_process_enrolls_from_the_environment_and_the_token_shows_nowhere(
    control_plane: RunningControlPlane, private_tmp: Path
) -> None:
    token = await control_plane.enroll_token("procs")
    # <prefix><id>_<secret>: the secret is everything after the id's underscore (it may hold
    # underscores of its own: splitting at the last one made it a character or two at times).
    secret = token.removeprefix(TOKEN_PREFIX).split("_", 1)[1]
    assert len(secret) >= 40
    node_dir = Path(tempfile.mkdtemp(prefix="proc-node-", dir=private_tmp))
    command = [
        sys.executable, "-m", "signalbox", "dataplane", "serve",
        "--listen", "127.0.0.1:0",
        "--control-plane", control_plane.node_address,
        "--enroll-address", control_plane.address,
        "--trust-key", str(control_plane.trust_key_path),
        "--node-id", "proc-1",
        "--data-dir", str(node_dir / "data"),
        "--log-level", "DEBUG",
    ]  # fmt: skip
    env = {**os.environ, "SIGNALBOX_ENROLL_TOKEN": token}
    log = node_dir / "node.log"
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.DEVNULL, stdout=sink, stderr=asyncio.subprocess.STDOUT, env=env
        )
    try:
        sync = control_plane.cp.sync
        assert sync is not None
        await eventually(lambda: "proc-1" in sync.streams, timeout=30, message="proc-1 connected")
        cmdline = await asyncio.to_thread(Path(f"/proc/{process.pid}/cmdline").read_bytes)
        assert secret.encode() not in cmdline
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 20)

    # The same token again, for another node: refused; the process says why, without the token.
    second = await asyncio.create_subprocess_exec(
        *[arg if arg != "proc-1" else "proc-2" for arg in command[:-4]],
        "--data-dir", str(node_dir / "data-2"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(second.communicate(), 30)
    assert second.returncode == 1
    assert b"rejected the enrollment token" in output
    for text in (log.read_bytes(), output):
        assert secret.encode() not in text


async def test_a_node_moved_to_another_group_needs_a_token_for_it(
    control_plane: RunningControlPlane, private_tmp: Path
) -> None:
    first = _settings(control_plane, "mover-1", private_tmp, **await control_plane.node_link("old"))
    async with DataPlaneNode(replace(first, scope=Scope(node_group="old"))) as node:
        await node.wait_for_version(1)
    moved = replace(first, scope=Scope(node_group="new"), enroll_token=None)
    with pytest.raises(NodeIdentityError, match="is for group 'old', not --node-group 'new'"):
        await DataPlaneNode(moved).start()
    async with DataPlaneNode(replace(moved, enroll_token=await control_plane.enroll_token("new"))) as node:
        await node.wait_for_version(1)
        assert node.identity.group() == "new"


async def test_a_node_renews_on_time_when_its_wall_clock_jumps_ahead_while_it_waits(
    control_plane: RunningControlPlane, private_tmp: Path
) -> None:
    """asyncio sleeps on the monotonic clock, which a wall-clock step does not move and which
    stands still while a VM is suspended. The renewer slept once, until two thirds of the
    certificate's lifetime as the wall clock read when it started: after a step forward or a
    long suspension it woke that much too late, past the expiry, and the node was cut off.
    It reads the wall clock again while it waits."""
    files = IdentityFiles(private_tmp / "jump-1")
    await control_plane.enroll("jump-1", files.directory)
    first = files.certificate()
    assert first is not None
    lifetime = first.not_valid_after_utc - first.not_valid_before_utc
    ahead = [timedelta(0)]
    reads = [0]

    def clock() -> datetime:
        reads[0] += 1
        return datetime.now(UTC) + ahead[0]

    renewer = CertificateRenewer(
        files,
        target=control_plane.node_address,
        node_id="jump-1",
        on_renewed=lambda: None,
        clock=clock,
        recheck=0.05,
    )
    task = asyncio.get_running_loop().create_task(renewer.run())
    try:
        await eventually(lambda: reads[0] >= 1, message="the renewer waits for its renewal time")
        assert renewer.renewals == 0
        # The clock steps past the renewal time (still before the expiry).
        ahead[0] = lifetime * 0.8
        await eventually(lambda: renewer.renewals >= 1, timeout=10, message="renewed after the clock step")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    renewed = files.certificate()
    assert renewed is not None
    assert renewed.serial_number != first.serial_number
    assert renewed.not_valid_after_utc >= first.not_valid_after_utc
