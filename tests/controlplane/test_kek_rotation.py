"""KEK rotation: every signing key (and the node CA key) is re-sealed under the new KEK in one transaction.

The running control plane keeps signing meanwhile (its keys are unsealed in memory);
restarted with the new KEK it signs as before, and the old KEK opens nothing any more.
"""

from __future__ import annotations

import asyncio
import stat
import tempfile
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from cryptography.exceptions import InvalidTag
from sqlalchemy import text

from controlplane.api_key_hash import ApiKeyHasher, HashKeyRing
from controlplane.db.session import create_engine, session_factory
from controlplane.errors import SigningKeyUnavailable
from controlplane.keys import Kek, generate_kek_file, load_kek
from dataplane.snapshot.envelope import verify
from dataplane.snapshot.hash_key import HashKeys, decode_hash_keys
from signalbox.api.admin.v1 import admin_pb2
from signalbox.shell.cli import main
from tests.e2e.test_config_push import _admin
from tests.fixtures.postgres import RunningControlPlane, cp_settings, running_control_plane


async def _kek_ids(database_url: str) -> set[str]:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            return {row[0] for row in await conn.execute(text("SELECT kek_id FROM signing_keys"))}
    finally:
        await engine.dispose()


async def _sealed(database_url: str) -> list[tuple[str, bytes]]:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(text("SELECT key_id, encrypted_private_key FROM signing_keys"))
            return [(kid, bytes(blob)) for kid, blob in rows]
    finally:
        await engine.dispose()


async def _live_hash_keys(database_url: str, kek: Kek) -> list[ApiKeyHasher]:
    """The live API-key hash key versions, unsealed with ``kek``."""
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session:
            return await HashKeyRing(kek).live(session)
    finally:
        await engine.dispose()


async def _publish_and_check(running: RunningControlPlane, tenant: str) -> None:
    """A change publishes a snapshot that verifies under every key the control plane signs with."""
    async with _admin(running) as admin:
        await admin.CreateTenant(admin_pb2.CreateTenantRequest(name=tenant))
        envelope = await admin.ExportSnapshot(admin_pb2.ExportSnapshotRequest())
    assert verify(envelope, {running.key_id: running.public_key}) == running.key_id


async def test_rotate_kek_reseals_every_key_without_downtime(database_url: str, private_tmp: Path) -> None:
    old_file = private_tmp / "old.kek"
    new_file = private_tmp / "new.kek"
    old = generate_kek_file(old_file)
    settings = cp_settings(database_url, private_tmp, kek_file=old_file)
    async with running_control_plane(settings) as first:
        async with _admin(first) as admin:
            await admin.RotateSigningKey(admin_pb2.RotateSigningKeyRequest())  # two keys to re-seal
            # And two API-key hash key versions (a key keeps version 1 live).
            await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="keyed"))
            await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant="keyed"))
            await admin.RotateApiKeyHashKey(admin_pb2.RotateApiKeyHashKeyRequest())
        live_before = await _live_hash_keys(database_url, old)
        assert [h.version for h in live_before] == [1, 2]
        assert await _kek_ids(database_url) == {old.id}
        argv = [
            "controlplane", "rotate-kek", "--database-url", database_url,
            "--kek-file", str(old_file), "--new-kek-file", str(new_file),
        ]  # fmt: skip
        assert await asyncio.to_thread(main, argv) == 0
        new = load_kek(kek_b64=None, kek_file=new_file, data_dir=private_tmp)
        assert stat.S_IMODE(new_file.stat().st_mode) == 0o600  # generated, private
        assert await _kek_ids(database_url) == {new.id}
        # No downtime: the running control plane still signs with its unsealed keys.
        await _publish_and_check(first, "during")
        # But it refuses to create a key it could not open after its restart.
        async with _admin(first) as admin:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await admin.RotateSigningKey(admin_pb2.RotateSigningKeyRequest())
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "restart it with the new KEK" in str(info.value.details())
        # Nor a hash key version (its start would fail on it).
        async with _admin(first) as admin:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await admin.RotateApiKeyHashKey(admin_pb2.RotateApiKeyHashKeyRequest())
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "restart it with the new KEK before rotating" in str(info.value.details())

        node_ca = first.cp.node_ca_path.read_bytes()
        hash_key = first.cp.api_key_hasher

    async with running_control_plane(replace(settings, kek_file=new_file)) as second:
        # The API-key hash key too, every version of it: every stored key digest still matches.
        assert second.cp.api_key_hasher == live_before[-1]
        assert await _live_hash_keys(database_url, new) == live_before
        assert hash_key == live_before[0]  # the one at the first start
        await _publish_and_check(second, "after")
        # The node CA key was re-sealed in the same transaction: the same CA keeps issuing.
        assert second.cp.node_ca_path.read_bytes() == node_ca
        await second.enroll("after-kek-rotation", private_tmp / "after-kek-rotation")

    with pytest.raises(SigningKeyUnavailable, match="sealed with KEK"):
        async with running_control_plane(settings):
            pass
    # Past the fingerprint check too: the old KEK cannot decrypt any sealed key, the new one can.
    sealed = await _sealed(database_url)
    assert len(sealed) == 2
    for key_id, blob in sealed:
        with pytest.raises(InvalidTag):
            old.unseal(blob, key_id.encode())
        assert len(new.unseal(blob, key_id.encode())) == 32


async def test_rotate_kek_with_the_wrong_current_kek_changes_nothing(
    database_url: str, private_tmp: Path
) -> None:
    right = private_tmp / "right.kek"
    generate_kek_file(right)
    wrong = private_tmp / "wrong.kek"
    generate_kek_file(wrong)
    settings = cp_settings(database_url, private_tmp, kek_file=right)
    async with running_control_plane(settings):
        before = await _kek_ids(database_url)
    argv = [
        "controlplane", "rotate-kek", "--database-url", database_url,
        "--kek-file", str(wrong), "--new-kek-file", str(private_tmp / "next.kek"),
    ]  # fmt: skip
    assert await asyncio.to_thread(main, argv) == 1
    assert await _kek_ids(database_url) == before


async def test_export_api_key_hash_key_writes_the_key_for_an_air_gapped_node(
    database_url: str, private_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    private_tmp = Path(tempfile.mkdtemp(prefix="export-hash-key-", dir=private_tmp))
    kek_file = private_tmp / "cp.kek"
    generate_kek_file(kek_file)
    async with running_control_plane(cp_settings(database_url, private_tmp, kek_file=kek_file)) as running:
        hasher = running.cp.api_key_hasher
    assert hasher is not None
    out = private_tmp / "hash-key"
    argv = [
        "controlplane",
        "export-api-key-hash-key",
        "--database-url",
        database_url,
        "--kek-file",
        str(kek_file),
    ]
    assert await asyncio.to_thread(main, [*argv, "--out", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert decode_hash_keys(out.read_bytes(), "out") == HashKeys({1: hasher.key})
    # Never over an existing file; the wrong KEK opens nothing.
    assert await asyncio.to_thread(main, [*argv, "--out", str(out)]) == 1
    assert "exists; not overwritten" in capsys.readouterr().err
    wrong = private_tmp / "wrong.kek"
    generate_kek_file(wrong)
    wrong_argv = [
        "controlplane",
        "export-api-key-hash-key",
        "--database-url",
        database_url,
        "--kek-file",
        str(wrong),
    ]
    assert await asyncio.to_thread(main, [*wrong_argv, "--out", str(private_tmp / "other")]) == 1
    assert "sealed with KEK" in capsys.readouterr().err
    assert not (private_tmp / "other").exists()
