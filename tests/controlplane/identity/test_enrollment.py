"""Enrollment: single-use, expiring tokens; precise refusals; secrets nowhere they could leak."""

from __future__ import annotations

import asyncio
import logging
import secrets
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from dataplane.identity import IdentityFiles, NodeIdentityError, enroll, urn
from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.api.config.v1 import identity_pb2, identity_pb2_grpc
from signalbox.tls import ClientTls
from tests.controlplane.conftest import Admin
from tests.fixtures.postgres import RunningControlPlane, cp_settings, running_control_plane, sql_rows
from tests.helpers import eventually

REJECTED = "enrollment token rejected"


def _secret(token: str) -> str:
    """The secret of ``sbx_enroll_<id>_<secret>``, which may itself contain "_"."""
    secret = token.split("_", 3)[3]
    assert len(secret) == 43, token
    return secret


async def _enroll_rpc(
    control_plane: RunningControlPlane, token: str, csr_pem: str, node_id: str
) -> identity_pb2.NodeCertificate:
    async with grpc.aio.insecure_channel(control_plane.address) as channel:
        stub = identity_pb2_grpc.NodeEnrollmentServiceStub(channel)
        return await stub.Enroll(
            identity_pb2.EnrollRequest(token=token, csr_pem=csr_pem, node_id=node_id), timeout=10
        )


async def _enroll_as(
    control_plane: RunningControlPlane, directory: Path, token: str, node_id: str
) -> x509.Certificate:
    """Enroll for real (plaintext to the loopback admin port), keeping the identity in ``directory``."""
    return await enroll(
        IdentityFiles(directory), address=control_plane.address, tls=ClientTls(), token=token, node_id=node_id
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
    await control_plane.ensure_group("fra-gpu", "on-prem", "fra-1")
    created = await admin.CreateEnrollToken(
        admin_pb2.CreateEnrollTokenRequest(group="fra-gpu", ttl_seconds=600, mode="on-prem", site="fra-1")
    )
    token = created.token
    assert token.startswith(f"sbx_enroll_{created.info.id}_")
    files = IdentityFiles(private_tmp / "a")
    cert = await _enroll_as(control_plane, files.directory, token, "edge a/1")
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
        await _enroll_as(control_plane, private_tmp / "b", token, "b")
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
    for token in (unknown, "not-a-token", "", unknown + "x" * 10_000, used, expiring):
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
    # An Ed25519 key: a certificate for it could never certify the node's evidence, whose
    # checkpoints are ECDSA P-256 signatures.
    ed25519_csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "h-1")]))
        .sign(ed25519.Ed25519PrivateKey.generate(), None)
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    # A request whose signature no longer matches what it says (one bit of the signature flipped).
    forged = bytearray(x509.load_pem_x509_csr(good_csr.encode()).public_bytes(serialization.Encoding.DER))
    forged[-8] ^= 0x01
    forged_pem = x509.load_der_x509_csr(bytes(forged)).public_bytes(serialization.Encoding.PEM).decode()
    # A request whose key is on a curve the library cannot load (SM2's OID where P-256's is).
    der = x509.load_pem_x509_csr(good_csr.encode()).public_bytes(serialization.Encoding.DER)
    p256, sm2 = bytes.fromhex("06082a8648ce3d030107"), bytes.fromhex("06082a811ccf5501822d")
    sm2_pem = x509.load_der_x509_csr(der.replace(p256, sm2)).public_bytes(serialization.Encoding.PEM).decode()
    cases = [
        (good_csr, "h\n1", "node_id: must be 1..256 characters without control characters"),
        (good_csr, "", "node_id: must be 1..256"),
        (good_csr, "x" * 257, "node_id: must be 1..256"),
        ("", "h-1", "csr_pem: must not be empty"),
        ("garbage", "h-1", "csr_pem: not a PEM certificate signing request"),
        ("x" * 20_000, "h-1", "csr_pem: at most"),
        (rsa_csr, "h-1", "csr_pem: key must be ECDSA P-256"),
        (ed25519_csr, "h-1", "csr_pem: key must be ECDSA P-256 (node evidence is signed with it)"),
        (forged_pem, "h-1", "csr_pem: signature does not verify"),
        (sm2_pem, "h-1", "csr_pem: key must be ECDSA P-256"),
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
    await control_plane.ensure_group("g")
    await control_plane.ensure_group("vault", "air-gapped", "site-a")
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
    # The group must exist, and its mode and site are what its certificates carry.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await admin.CreateEnrollToken(admin_pb2.CreateEnrollTokenRequest(group="nowhere", ttl_seconds=60))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "node group 'nowhere' not found" in (info.value.details() or "")
    for request, expected in (
        (
            admin_pb2.CreateEnrollTokenRequest(group="vault", ttl_seconds=60, mode="cloud"),
            "mode: node group 'vault' is air-gapped, not cloud",
        ),
        (
            admin_pb2.CreateEnrollTokenRequest(group="vault", ttl_seconds=60, site="site-b"),
            "site: node group 'vault' is at site 'site-a', not 'site-b'",
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await admin.CreateEnrollToken(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == expected
    implied = await admin.CreateEnrollToken(admin_pb2.CreateEnrollTokenRequest(group="vault", ttl_seconds=60))
    assert (implied.info.mode, implied.info.site) == ("air-gapped", "site-a")

    assert control_plane.cp.admin is not None
    _, viewer = await control_plane.cp.admin.create_token("watcher", role="auditor")
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
    await control_plane.ensure_group("g")
    created = await admin.CreateEnrollToken(admin_pb2.CreateEnrollTokenRequest(group="g", ttl_seconds=60))
    token = created.token
    secret = _secret(token)
    await _enroll_as(control_plane, private_tmp / "s1", token, "s1")
    errors = []
    for node_id in ("s2", "s3"):
        try:
            await _enroll_as(control_plane, private_tmp / node_id, token, node_id)
        except NodeIdentityError as exc:
            errors.append(str(exc))
    assert len(errors) == 2
    audit = _audit_text(control_plane.database_url)
    assert "CreateEnrollToken" in audit
    assert "Enroll" in audit
    for text in (caplog.text, audit, *errors):
        assert secret not in text
        assert token not in text


async def test_a_token_scanner_cannot_fill_the_audit_table(database_url: str, private_tmp: Path) -> None:
    settings = cp_settings(database_url, private_tmp, unauthenticated_audit_rows=2)
    async with running_control_plane(settings) as running:
        csr = IdentityFiles(private_tmp / "scan").csr_pem("scan")
        for _ in range(6):
            with pytest.raises(grpc.aio.AioRpcError):
                await _enroll_rpc(
                    running, f"sbx_enroll_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}", csr, "scan"
                )
    # Two rows of their own, then one summary row for the other four (written on stop).
    enrolls = [line for line in _audit_text(database_url).splitlines() if " | Enroll | " in line]
    assert len(enrolls) == 3
    assert "4 more refused enrollments from ipv4:127.0.0.1 suppressed" in enrolls[-1]


async def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "signalbox", "admin", *args]
    return await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=60)


async def test_the_admin_cli_creates_lists_and_revokes(
    control_plane: RunningControlPlane, private_tmp: Path
) -> None:
    target = ("--target", control_plane.address, "--token", control_plane.token)
    await control_plane.ensure_group("edge", "on-prem", "fra-1")
    created = await _cli(
        *target, "node", "enroll-token", "--group", "edge", "--ttl", "30m", "--site", "fra-1"
    )
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("sbx_enroll_")
    assert "shown once" in created.stderr
    assert token not in created.stderr
    await _enroll_as(control_plane, private_tmp / "cli-1", token, "cli-1")

    listed = await _cli(*target, "node", "enroll-token", "list")
    assert listed.returncode == 0, listed.stderr
    (row,) = listed.stdout.splitlines()[1:]
    assert row.split()[:4] == [token.split("_")[2], "edge", "on-prem", "fra-1"]
    assert "by cli-1" in row
    assert _secret(token) not in listed.stdout

    bad = await _cli(*target, "node", "enroll-token", "--group", "edge", "--ttl", "8d")
    assert bad.returncode != 0
    assert "ttl_seconds: must be 1 .. 604800" in bad.stderr
    revoked = await _cli(*target, "node", "revoke", "cli-1")
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout == "revoked 1 certificates of node cli-1\n"


async def test_two_nodes_racing_with_one_token_get_one_certificate(
    control_plane: RunningControlPlane, private_tmp: Path
) -> None:
    token = await control_plane.enroll_token()
    results = await asyncio.gather(
        *(
            _enroll_rpc(
                control_plane,
                token,
                IdentityFiles(private_tmp / f"race-{i}").csr_pem(f"race-{i}"),
                f"race-{i}",
            )
            for i in range(8)
        ),
        return_exceptions=True,
    )
    issued = [r for r in results if isinstance(r, identity_pb2.NodeCertificate)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(issued) == 1
    assert len(refused) == 7
    assert {r.code() for r in refused} == {grpc.StatusCode.UNAUTHENTICATED}


@pytest.mark.parametrize(
    "node_id",
    ["édge-" + "é" * 40, "節点" * 30, "😀" * 17, "a" * 63 + "é"],
    ids=["latin-80-bytes", "cjk-180-bytes", "emoji-68-bytes", "split-at-64"],
)
async def test_a_node_id_past_64_utf8_bytes_enrolls_with_the_common_name_clipped(
    control_plane: RunningControlPlane, node_id: str
) -> None:
    # The id is up to 256 characters; X.509 caps the common name at 64 UTF-8 bytes. The id the
    # certificate binds is its SAN URN; the common name is a label, clipped on a character.
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "node")]))
        .sign(key, hashes.SHA256())
    )
    csr_pem = csr.public_bytes(serialization.Encoding.PEM).decode()
    issued = await _enroll_rpc(control_plane, await control_plane.enroll_token(), csr_pem, node_id)
    cert = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )
    assert uris[0] == urn("node", node_id)
    common_name = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert isinstance(common_name, str)
    assert node_id.startswith(common_name)
    assert 60 < len(common_name.encode()) <= 64


async def test_a_node_with_a_long_non_ascii_id_enrolls_itself(
    control_plane: RunningControlPlane, private_tmp: Path
) -> None:
    node_id = "節点-" + "é" * 40
    cert = await _enroll_as(control_plane, private_tmp / "n", await control_plane.enroll_token(), node_id)
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )
    assert uris[0] == urn("node", node_id)
    assert IdentityFiles(private_tmp / "n").problem(node_id) == ""


async def test_a_token_cannot_claim_the_id_of_a_node_whose_certificate_is_in_force(
    control_plane: RunningControlPlane, admin: Admin, private_tmp: Path
) -> None:
    # "victim" is enrolled in group "core"; someone holding a token for another group (a
    # stolen or a low-trust one) asks for a certificate as "victim" with a key of their own.
    await _enroll_as(
        control_plane, private_tmp / "victim", await control_plane.enroll_token("core"), "victim"
    )
    stolen = await control_plane.enroll_token("kiosk")
    thief_csr = IdentityFiles(private_tmp / "thief").csr_pem("victim")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _enroll_rpc(control_plane, stolen, thief_csr, "victim")
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert (info.value.details() or "").startswith(
        "node_id: enrolled node 'victim' already exists: it holds a certificate in force for another key"
    )
    assert "signalbox admin node revoke" in (info.value.details() or "")
    assert stolen not in (info.value.details() or "")
    issued = "SELECT node_group FROM node_certificates WHERE node_id = 'victim'"
    assert [row[0] for row in sql_rows(control_plane.database_url, issued)] == ["core"]
    # The refusal did not burn the token, and is in the audit trail.
    await _enroll_rpc(control_plane, stolen, thief_csr, "thief-1")
    assert "ALREADY_EXISTS" in _audit_text(control_plane.database_url)

    # The node itself (its own key) re-enrolls with a token for another group, as a node
    # moved to another group does.
    moved = await _enroll_as(
        control_plane, private_tmp / "victim", await control_plane.enroll_token("edge"), "victim"
    )
    assert urn("group", "edge") in moved.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.UniformResourceIdentifier)
    # Once revoked, the id is free again: coming back takes a new token (and may be a new key).
    await admin.RevokeNode(admin_pb2.RevokeNodeRequest(node_id="victim"))
    await _enroll_rpc(control_plane, await control_plane.enroll_token("core"), thief_csr, "victim")
