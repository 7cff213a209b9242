"""API key secrets, admin tokens and the signing private key never appear in the
database, the logs or a snapshot in plaintext."""

from __future__ import annotations

import base64
import logging

import grpc
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from controlplane.db.models import Base
from signalbox.api.admin.v1 import admin_pb2
from tests.controlplane.conftest import Admin
from tests.fixtures.postgres import RunningControlPlane


def _forms(secret: bytes) -> list[bytes]:
    """The secret as it could leak: raw, hex, base64 (padded and url-safe)."""
    return [
        secret,
        secret.hex().encode(),
        base64.b64encode(secret),
        base64.urlsafe_b64encode(secret).rstrip(b"="),
    ]


def _dump_all_rows(database_url: str) -> bytes:
    engine = sa.create_engine(database_url, poolclass=sa.NullPool)
    chunks: list[bytes] = []
    try:
        with engine.connect() as conn:
            for table in Base.metadata.sorted_tables:
                for row in conn.execute(sa.select(table)):
                    for value in row:
                        chunks.append(
                            bytes(value) if isinstance(value, bytes | memoryview) else repr(value).encode()
                        )
    finally:
        engine.dispose()
    return b"\n".join(chunks)


async def test_no_plaintext_secret_anywhere(
    admin: Admin, control_plane: RunningControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await admin.seed()
    key = await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant="acme", name="leak-check"))
    assert control_plane.cp.admin is not None
    _, second_token = await control_plane.cp.admin.create_token("second")
    # A refused call presenting a secret as its token must not echo it anywhere either.
    with pytest.raises(grpc.aio.AioRpcError):
        await admin.ListTenants(
            admin_pb2.ListTenantsRequest(), metadata=(("authorization", f"Bearer {key.secret}"),)
        )
    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant="acme", document="default_model: small"))
    envelope = await admin.ExportSnapshot(admin_pb2.ExportSnapshotRequest())

    assert control_plane.cp.signer is not None
    private_raw = control_plane.cp.signer.private_key.private_bytes(
        Encoding.Raw, PrivateFormat.Raw, NoEncryption()
    )
    secrets = {
        "api key": key.secret.encode(),
        "admin token": control_plane.token.encode(),
        "second admin token": second_token.encode(),
        "signing private key": private_raw,
    }
    places = {
        "database": _dump_all_rows(control_plane.database_url),
        "logs": caplog.text.encode(),
        "snapshot payload": bytes(envelope.payload),
        "snapshot envelope": envelope.SerializeToString(),
    }
    for secret_name, secret in secrets.items():
        for place_name, content in places.items():
            for form in _forms(secret):
                assert form not in content, f"{secret_name} found in {place_name}"
    # The scan is meaningful: the rows are there, only hashed or sealed.
    assert b"leak-check" in places["database"]
