"""Enrollment: single-use, expiring tokens; precise refusals; secrets nowhere they could leak."""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dataplane.identity import IdentityFiles, NodeIdentityError, enroll, urn
from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.api.config.v1 import identity_pb2, identity_pb2_grpc
from signalbox.tls import ClientTls
from tests.controlplane.conftest import Admin
from tests.fixtures.postgres import RunningControlPlane
from tests.helpers import eventually

REJECTED = "enrollment token rejected"


async def _enroll_rpc(
    control_plane: RunningControlPlane, token: str, csr_pem: str, node_id: str
) -> identity_pb2.NodeCertificate:
    async with grpc.aio.insecure_channel(control_plane.address) as channel:
        stub = identity_pb2_grpc.NodeEnrollmentServiceStub(channel)
        return await stub.Enroll(
            identity_pb2.EnrollRequest(token=token, csr_pem=csr_pem, node_id=node_id), timeout=10
        )


def _audit_text(database_url: str) -> str:
    engine = sa.create_engine(database_url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT actor, method, target, result, detail FROM audit_log")).all()
    finally:
        engine.dispose()
    return "\n".join(" | ".join(row) for row in rows)


async def test_a_token_enrolls_once_and_binds_id_group_mode_and_site(
    control_plane: RunningControlPlane, admin: Admin, private_tmp: Path
) -> None:
    created = await admin.CreateEnrollToken(
        admin_pb2.CreateEnrollTokenRequest(group="fra-gpu", ttl_seconds=600, mode="on-prem", site="fra-1")
    )
    token = created.token
    assert token.startswith(f"sbx_enroll_{created.info.id}_")
    files = IdentityFiles(private_tmp / "a")
    cert = await enroll(
        files, address=control_plane.address, tls=ClientTls(), token=token, node_id="edge a/1"
    )
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )
    assert uris == [
        urn("node", "edge a/1"),
        urn("group", "fra-gpu"),
        urn("mode", "on-prem"),
        urn("site", "fra-1"),
    ]
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "edge a/1"
    assert files.key.stat().st_mode & 0o777 == 0o600
    assert files.problem("edge a/1") == ""

    # Single use: the same token again, even for another node, is refused.
    with pytest.raises(NodeIdentityError, match="rejected the enrollment token"):
        await enroll(
            IdentityFiles(private_tmp / "b"),
            address=control_plane.address,
            tls=ClientTls(),
            token=token,
            node_id="b",
        )
    (listed,) = (await admin.ListEnrollTokens(admin_pb2.ListEnrollTokensRequest())).tokens
    assert (listed.id, listed.group, listed.used_by) == (created.info.id, "fra-gpu", "edge a/1")


async def test_unknown_malformed_used_and_expired_tokens_get_one_answer(
    control_plane: RunningControlPlane, private_tmp: Path
) -> None:
    csr = IdentityFiles(private_tmp / "n").csr_pem("n-1")
    expiring = await control_plane.enroll_token(ttl=1)
    used = await control_plane.enroll_token()
    await _enroll_rpc(control_plane, used, csr, "n-0")
    unknown = f"sbx_enroll_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"
    (row,) = [
        t
        for t in await control_plane.cp.identities.list_tokens()
        if t.expires_at - t.created_at < timedelta(seconds=2)
    ]  # type: ignore[union-attr]
    await eventually(lambda: datetime.now(UTC) > row.expires_at, timeout=5, message="token expired")
    for token in (unknown, "not-a-token", "", used, expiring):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _enroll_rpc(control_plane, token, csr, "n-1")
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert info.value.details() == REJECTED
    # The audit trail knows why (by token id), the caller does not.
    audit = _audit_text(control_plane.database_url)
    assert "expired" in audit
    assert "unknown" in audit
    assert "already used by n-0" in audit


async def test_bad_requests_are_refused_precisely_and_do_not_burn_the_token(
    control_plane: RunningControlPlane, private_tmp: Path
) -> None:
    token = await control_plane.enroll_token()
    files = IdentityFiles(private_tmp / "h")
    good_csr = files.csr_pem("h-1")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "h-1")]))
        .sign(rsa_key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    # A request whose signature no longer matches what it says (one bit of the signature flipped).
    forged = bytearray(x509.load_pem_x509_csr(good_csr.encode()).public_bytes(serialization.Encoding.DER))
    forged[-8] ^= 0x01
    forged_pem = x509.load_der_x509_csr(bytes(forged)).public_bytes(serialization.Encoding.PEM).decode()
    cases = [
        (good_csr, "h\n1", "node_id: must be 1..256 characters without control characters"),
        (good_csr, "", "node_id: must be 1..256"),
        (good_csr, "x" * 257, "node_id: must be 1..256"),
        ("", "h-1", "csr_pem: must not be empty"),
        ("garbage", "h-1", "csr_pem: not a PEM certificate signing request"),
        ("x" * 20_000, "h-1", "csr_pem: at most"),
        (rsa_csr, "h-1", "csr_pem: key must be ECDSA P-256 or Ed25519"),
        (forged_pem, "h-1", "csr_pem: signature does not verify"),
    ]
    for csr, node_id, expected in cases:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _enroll_rpc(control_plane, token, csr, node_id)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, expected
        assert (info.value.details() or "").startswith(expected)
        assert token not in (info.value.details() or "")
    # None of that consumed the token.
    issued = await _enroll_rpc(control_plane, token, good_csr, "h-1")
    assert issued.certificate_pem.startswith("-----BEGIN CERTIFICATE-----")


async def test_token_ttl_and_group_are_checked_and_only_admins_create_tokens(
    control_plane: RunningControlPlane, admin: Admin
) -> None:
    for request, expected in (
        (admin_pb2.CreateEnrollTokenRequest(group="g", ttl_seconds=0), "ttl_seconds: must be 1 .. 604800"),
        (
            admin_pb2.CreateEnrollTokenRequest(group="g", ttl_seconds=8 * 86400),
            "ttl_seconds: must be 1 .. 604800",
        ),
        (admin_pb2.CreateEnrollTokenRequest(group="g", ttl_seconds=2**64 - 1), "ttl_seconds: at most"),
        (admin_pb2.CreateEnrollTokenRequest(group="", ttl_seconds=60), "group: must not be empty"),
        (admin_pb2.CreateEnrollTokenRequest(group="a b", ttl_seconds=60), "group: must start with"),
        (admin_pb2.CreateEnrollTokenRequest(group="g", ttl_seconds=60, mode="moon"), "mode: must be one of"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await admin.CreateEnrollToken(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (info.value.details() or "").startswith(expected)

    assert control_plane.cp.admin is not None
    _, viewer = await control_plane.cp.admin.create_token("watcher", role="viewer")
    async with grpc.aio.insecure_channel(control_plane.address) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        metadata = (("authorization", f"Bearer {viewer}"),)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CreateEnrollToken(
                admin_pb2.CreateEnrollTokenRequest(group="g", ttl_seconds=60), metadata=metadata, timeout=10
            )
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.RevokeNode(admin_pb2.RevokeNodeRequest(node_id="x"), metadata=metadata, timeout=10)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # Listing shows no secret, so a viewer may.
        await stub.ListEnrollTokens(admin_pb2.ListEnrollTokensRequest(), metadata=metadata, timeout=10)


async def test_the_token_appears_in_no_log_audit_row_or_error(
    control_plane: RunningControlPlane, admin: Admin, private_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    created = await admin.CreateEnrollToken(admin_pb2.CreateEnrollTokenRequest(group="g", ttl_seconds=60))
    token = created.token
    secret = token.rsplit("_", 1)[1]
    await enroll(
        IdentityFiles(private_tmp / "s1"),
        address=control_plane.address,
        tls=ClientTls(),
        token=token,
        node_id="s1",
    )
    errors = []
    for node_id in ("s2", "s3"):
        try:
            await enroll(
                IdentityFiles(private_tmp / node_id),
                address=control_plane.address,
                tls=ClientTls(),
                token=token,
                node_id=node_id,
            )
        except NodeIdentityError as exc:
            errors.append(str(exc))
    assert len(errors) == 2
    audit = _audit_text(control_plane.database_url)
    assert "CreateEnrollToken" in audit
    assert "Enroll" in audit
    for text in (caplog.text, audit, *errors):
        assert secret not in text
        assert token not in text
