"""Rotation of the API-key hash key on a real control plane (real PostgreSQL) and real nodes:
keys issued before and after a rotation both authenticate (connected, restarted without a
control plane, air-gapped from the exported file); a version keys still use cannot be
retired; revoking its last key retires it and nodes forget it."""

from __future__ import annotations

import asyncio
import stat
import tempfile
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from controlplane.keys import KEK_FILE_NAME
from dataplane.app import DataPlaneNode
from dataplane.node_settings import NodeSettings
from dataplane.snapshot.hash_key import API_KEY_HASH_KEY_FILE, decode_hash_keys
from dataplane.snapshot.lkg import SNAPSHOT_DIR
from signalbox.api.admin.v1 import admin_pb2
from signalbox.shell.cli import main
from signalbox.shell.simulator import Simulator
from tests.controlplane.conftest import Admin
from tests.e2e.conftest import NodeFactory
from tests.e2e.test_key_revocation import TENANT, _call, _seed
from tests.fixtures.postgres import RunningControlPlane, sql_rows
from tests.helpers import eventually

OK = grpc.StatusCode.OK
REFUSED = grpc.StatusCode.UNAUTHENTICATED


async def _versions(admin: Admin) -> dict[int, tuple[str, int]]:
    listing = await admin.ListApiKeyHashKeys(admin_pb2.ListApiKeyHashKeysRequest())
    return {v.version: (v.state, v.usable_keys) for v in listing.versions}


async def _rows(control_plane: RunningControlPlane, sql: str) -> list[tuple[object, ...]]:
    """In a thread: the control plane under test shares this event loop."""
    return [tuple(r) for r in await asyncio.to_thread(sql_rows, control_plane.database_url, sql)]


async def _refused(admin: Admin, version: int) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await admin.RetireApiKeyHashKey(admin_pb2.RetireApiKeyHashKeyRequest(version=version))
    return refused.value


async def _export(control_plane: RunningControlPlane, out: Path) -> None:
    argv = [
        "controlplane", "export-api-key-hash-key", "--database-url", control_plane.database_url,
        "--kek-file", str(control_plane.data_dir / KEK_FILE_NAME), "--out", str(out),
    ]  # fmt: skip
    assert await asyncio.to_thread(main, argv) == 0


async def test_keys_of_both_versions_verify_and_the_old_version_retires_with_its_last_key(
    admin: Admin,
    simulator: Simulator,
    connected_node: NodeFactory,
    control_plane: RunningControlPlane,
    private_tmp: Path,
) -> None:
    await _seed(admin, simulator)
    node = await connected_node("rotation-a")
    before = await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant=TENANT, name="before"))

    rotated = await admin.RotateApiKeyHashKey(admin_pb2.RotateApiKeyHashKeyRequest())
    assert (rotated.version.version, rotated.version.state, list(rotated.retired)) == (2, "active", [])
    after = await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant=TENANT, name="after"))
    assert await _versions(admin) == {1: ("retiring", 1), 2: ("active", 1)}
    rows = await _rows(control_plane, "SELECT name, hash_key_version FROM api_keys ORDER BY name")
    assert rows == [("after", 2), ("before", 1)]

    await node.store.wait_for_version(await admin.latest_version(), timeout=15)
    assert node.store.api_key_hash_key_versions == (1, 2)
    for key in (before, after):
        assert await _call(node, key.secret) == OK

    # A version keys still use cannot be retired, nor the active one, nor one that does not exist.
    in_use = await _refused(admin, 1)
    assert in_use.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "version 1 is still used by 1 usable API keys" in (in_use.details() or "")
    active = await _refused(admin, 2)
    assert active.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "version 2 is the active" in (active.details() or "")
    assert (await _refused(admin, 9)).code() == grpc.StatusCode.NOT_FOUND
    assert (await _refused(admin, 0)).code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await _versions(admin) == {1: ("retiring", 1), 2: ("active", 1)}

    # Air-gapped: the pinned snapshot plus the exported file, which holds both versions.
    exported = private_tmp / "hash-keys.json"
    await _export(control_plane, exported)
    assert stat.S_IMODE(exported.stat().st_mode) == 0o600
    pin = private_tmp / "site.pin"
    pin.write_bytes((await admin.ExportSnapshot(admin_pb2.ExportSnapshotRequest())).SerializeToString())
    site = DataPlaneNode(
        NodeSettings(
            listen="127.0.0.1:0",
            snapshot_file=pin,
            trust_keys=(control_plane.trust_key_path,),
            api_key_hash_keys=decode_hash_keys(exported.read_bytes(), str(exported)),
            node_id="site-1",
            data_dir=Path(tempfile.mkdtemp(prefix="site-", dir=private_tmp)),
            drain_seconds=1.0,
        )
    )
    await site.start()
    try:
        assert site.store.api_key_hash_key_versions == (1, 2)
        for key in (before, after):
            assert await _call(site, key.secret) == OK
    finally:
        await site.stop()

    # Restarted with no control plane reachable: both versions were kept (0600), both verify.
    second = await connected_node("rotation-b")
    await second.store.wait_for_version(await admin.latest_version(), timeout=15)
    await eventually(lambda: second.store.api_key_hash_key_versions == (1, 2), message="both versions")
    kept = second.settings.data_dir / SNAPSHOT_DIR / API_KEY_HASH_KEY_FILE
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    await second.stop()
    alone = DataPlaneNode(replace(second.settings, listen="127.0.0.1:0", control_plane="127.0.0.1:9"))
    await alone.start()
    try:
        assert alone.store.api_key_hash_key_versions == (1, 2)
        for key in (before, after):
            assert await _call(alone, key.secret) == OK
    finally:
        await alone.stop()

    # Revoking the last key of version 1 retires it: its key is destroyed, nodes forget it.
    await admin.DeleteApiKey(admin_pb2.DeleteApiKeyRequest(id=before.key.id))
    listing = await admin.ListApiKeyHashKeys(admin_pb2.ListApiKeyHashKeysRequest())
    assert [(v.version, v.state, v.usable_keys) for v in listing.versions] == [
        (1, "retired", 0),
        (2, "active", 1),
    ]
    assert listing.versions[0].HasField("retired_at")
    sealed = await _rows(control_plane, "SELECT id, sealed_key IS NULL FROM api_key_hash_key ORDER BY id")
    assert sealed == [(1, True), (2, False)]
    await node.store.wait_for_version(await admin.latest_version(), timeout=15)
    await eventually(lambda: node.store.api_key_hash_key_versions == (2,), message="version 1 forgotten")
    on_disk = node.settings.data_dir / SNAPSHOT_DIR / API_KEY_HASH_KEY_FILE
    assert decode_hash_keys(on_disk.read_bytes(), str(on_disk)).versions == (2,)
    assert await _call(node, before.secret) == REFUSED
    assert await _call(node, after.secret) == OK
    # Retiring a retired version changes nothing.
    again = await admin.RetireApiKeyHashKey(admin_pb2.RetireApiKeyHashKeyRequest(version=1))
    assert again.version.state == "retired"


async def test_a_rotation_retires_an_unused_version_at_once_and_live_versions_are_bounded(
    admin: Admin, simulator: Simulator, connected_node: NodeFactory
) -> None:
    """A rotation with no usable key under the active version retires that version on the
    spot, and nodes forget it at once (a snapshot is published for every group even though no
    key changed); a rotation beyond the live versions allowed is refused."""
    await _seed(admin, simulator)
    node = await connected_node("rotation-c")
    first = await admin.RotateApiKeyHashKey(admin_pb2.RotateApiKeyHashKeyRequest())
    assert list(first.retired) == [1]  # no key used version 1
    await node.store.wait_for_version(first.snapshot_version, timeout=15)
    await eventually(lambda: node.store.api_key_hash_key_versions == (2,), message="only version 2")
    key = await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant=TENANT, name="short"))
    await node.store.wait_for_version(await admin.latest_version(), timeout=15)
    assert await _call(node, key.secret) == OK
    # At most a few live versions: each costs every key check an HMAC on every node.
    for _ in range(3):
        await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant=TENANT, name="pin"))
        await admin.RotateApiKeyHashKey(admin_pb2.RotateApiKeyHashKeyRequest())
    with pytest.raises(grpc.aio.AioRpcError) as too_many:
        await admin.RotateApiKeyHashKey(admin_pb2.RotateApiKeyHashKeyRequest())
    assert too_many.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "4 API-key hash key versions are live, at most 4" in (too_many.value.details() or "")
    assert [s for s, _ in (await _versions(admin)).values()] == [
        "retired",
        "retiring",
        "retiring",
        "retiring",
        "active",
    ]
