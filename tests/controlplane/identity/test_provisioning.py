"""Provisioning an air-gapped node: its key is certified without enrollment, and the evidence
it signed before (with that same key) verifies with the certificate afterwards."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from dataplane.evidence.log import EvidenceLog, log_path
from dataplane.identity import IdentityFiles, urn
from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from tests.controlplane.conftest import Admin
from tests.fixtures.postgres import RunningControlPlane, sql_rows


async def _signalbox(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "signalbox", *args]
    return await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=60)


async def _evidence_before_provisioning(data_dir: Path, node_id: str) -> None:
    key = IdentityFiles.under(data_dir).private_key()
    async with EvidenceLog(log_path(data_dir, node_id), node_id, signer=key) as log:
        for i in range(5):
            log.append({"ts": time.time(), "correlation_id": f"c-{i}", "outcome": {"code": "OK"}})


async def test_an_air_gapped_node_is_certified_for_its_own_key_and_its_old_evidence_verifies(
    control_plane: RunningControlPlane, private_tmp: Path
) -> None:
    await control_plane.ensure_group("vault", "air-gapped", "site-a")
    data_dir, node = private_tmp / "vault-node", "vault-1"
    await _evidence_before_provisioning(data_dir, node)
    verified = await _signalbox("dataplane", "evidence", "verify", "--data-dir", str(data_dir))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "key=node-key-uncertified" in verified.stdout

    csr = private_tmp / "vault-1.csr"
    requested = await _signalbox(
        "dataplane", "identity", "request", "--data-dir", str(data_dir), "--node-id", node, "--out", str(csr)
    )
    assert requested.returncode == 0, requested.stderr
    assert csr.read_text().startswith("-----BEGIN CERTIFICATE REQUEST-----")
    key_before = IdentityFiles.under(data_dir).key.read_bytes()

    bundle = private_tmp / "vault-1.bundle.pem"
    target = ("admin", "--target", control_plane.address, "--token", control_plane.token)
    certified = await _signalbox(
        *target,
        "node",
        "certify",
        "--node-id",
        node,
        "--csr",
        str(csr),
        "--group",
        "vault",
        "--out",
        str(bundle),
    )
    assert certified.returncode == 0, certified.stderr
    assert f"for node {node} until" in certified.stdout
    assert bundle.stat().st_mode & 0o777 == 0o600
    cert, _ca = x509.load_pem_x509_certificates(bundle.read_bytes())
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )
    assert uris == [
        urn("node", node),
        urn("group", "vault"),
        urn("mode", "air-gapped"),
        urn("site", "site-a"),
    ]
    # An air-gapped node cannot renew online: the certificate gets the longest allowed life.
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days >= 364

    installed = await _signalbox(
        "dataplane", "identity", "install", "--data-dir", str(data_dir), "--node-id", node, str(bundle)
    )
    assert installed.returncode == 0, installed.stderr
    files = IdentityFiles.under(data_dir)
    assert files.key.read_bytes() == key_before  # the key never moved or changed
    assert files.problem(node) == ""
    shown = await _signalbox("dataplane", "identity", "show", "--data-dir", str(data_dir), "--node-id", node)
    assert shown.returncode == 0, shown.stderr
    assert urn("mode", "air-gapped") in shown.stdout
    assert f"usable as node {node}: yes" in shown.stdout

    # What the node signed before it was provisioned now verifies with the certificate.
    verified = await _signalbox("dataplane", "evidence", "verify", "--data-dir", str(data_dir))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"OK {node}/0 records=5" in verified.stdout
    assert "key=certified" in verified.stdout

    # The control plane knows the certificate like an enrolled node's: revocation works.
    revoked = await _signalbox(*target, "node", "revoke", node)
    assert revoked.stdout == f"revoked 1 certificates of node {node}\n", revoked.stderr


async def test_bad_requests_are_refused_precisely_and_only_admins_certify(
    control_plane: RunningControlPlane, admin: Admin, private_tmp: Path
) -> None:
    await control_plane.ensure_group("vault", "air-gapped", "site-a")
    csr = IdentityFiles(private_tmp / "n").csr_pem("n")
    for request, code, expected in (
        (
            admin_pb2.CertifyNodeRequest(node_id="n", csr_pem="", group="vault"),
            "INVALID_ARGUMENT",
            "csr_pem: must not be empty",
        ),
        (
            admin_pb2.CertifyNodeRequest(node_id="n", csr_pem="-----BEGIN NOTHING-----", group="vault"),
            "INVALID_ARGUMENT",
            "csr_pem: not a PEM certificate signing request",
        ),
        (
            admin_pb2.CertifyNodeRequest(node_id="", csr_pem=csr, group="vault"),
            "INVALID_ARGUMENT",
            "node_id:",
        ),
        (
            admin_pb2.CertifyNodeRequest(node_id="n", csr_pem=csr, group=""),
            "INVALID_ARGUMENT",
            "group: must not be empty",
        ),
        (
            admin_pb2.CertifyNodeRequest(node_id="n", csr_pem=csr, group="vault", ttl_seconds=400 * 86400),
            "INVALID_ARGUMENT",
            "ttl_seconds: at most 31536000",
        ),
        (
            admin_pb2.CertifyNodeRequest(node_id="n", csr_pem=csr, group="nowhere"),
            "NOT_FOUND",
            "node group 'nowhere' not found",
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await admin.CertifyNode(request)
        assert info.value.code().name == code
        assert expected in (info.value.details() or "")

    assert control_plane.cp.admin is not None
    _, viewer = await control_plane.cp.admin.create_token("watcher", role="auditor")
    async with grpc.aio.insecure_channel(control_plane.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await admin_pb2_grpc.AdminServiceStub(channel).CertifyNode(
                admin_pb2.CertifyNodeRequest(node_id="n", csr_pem=csr, group="vault"),
                metadata=(("authorization", f"Bearer {viewer}"),),
                timeout=10,
            )
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_certify_cannot_issue_for_another_key_while_a_certificate_is_in_force(
    control_plane: RunningControlPlane, admin: Admin, private_tmp: Path
) -> None:
    # "victim" enrolled online; an admin certifying its id for another key (a typo, a copied
    # command, a stolen admin token) would mint a second identity that ships into its chains.
    await control_plane.enroll("victim", private_tmp / "victim", group="core")
    await control_plane.ensure_group("vault", "air-gapped", "site-a")
    other = IdentityFiles(private_tmp / "other").csr_pem("victim")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await admin.CertifyNode(admin_pb2.CertifyNodeRequest(node_id="victim", csr_pem=other, group="vault"))
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    details = info.value.details() or ""
    assert details.startswith(
        "node_id: enrolled node 'victim' already exists: it holds a certificate in force for another key"
    )
    assert "signalbox admin node revoke" in details
    issued = "SELECT node_group FROM node_certificates WHERE node_id = 'victim'"
    assert [row[0] for row in sql_rows(control_plane.database_url, issued)] == ["core"]
    audited = "SELECT result FROM audit_log WHERE method = 'CertifyNode' ORDER BY id"
    assert [row[0] for row in sql_rows(control_plane.database_url, audited)] == ["ALREADY_EXISTS"]

    # The node's own key may be certified again (moved to the air-gapped group).
    own = IdentityFiles(private_tmp / "victim").csr_pem("victim")
    await admin.CertifyNode(admin_pb2.CertifyNodeRequest(node_id="victim", csr_pem=own, group="vault"))
    # Once revoked, the id is free for another key.
    await admin.RevokeNode(admin_pb2.RevokeNodeRequest(node_id="victim"))
    await admin.CertifyNode(admin_pb2.CertifyNodeRequest(node_id="victim", csr_pem=other, group="vault"))
    assert [row[0] for row in sql_rows(control_plane.database_url, audited)] == [
        "ALREADY_EXISTS",
        "OK",
        "OK",
    ]


async def test_install_checks_the_bundle_and_writes_nothing_when_it_is_wrong(
    control_plane: RunningControlPlane, admin: Admin, private_tmp: Path
) -> None:
    await control_plane.ensure_group("vault", "air-gapped", "site-a")
    mine, other = (
        IdentityFiles(private_tmp / "mine" / "identity"),
        IdentityFiles(private_tmp / "other" / "identity"),
    )
    issued = await admin.CertifyNode(
        admin_pb2.CertifyNodeRequest(node_id="n", csr_pem=other.csr_pem("n"), group="vault")
    )
    mine.private_key()
    bundles = private_tmp / "bundles"
    bundles.mkdir()

    async def install(name: str, content: str, node: str = "n") -> subprocess.CompletedProcess[str]:
        path = bundles / name
        path.write_text(content)
        return await _signalbox(
            "dataplane",
            "identity",
            "install",
            "--data-dir",
            str(private_tmp / "mine"),
            "--node-id",
            node,
            str(path),
        )

    good_for_other = issued.certificate_pem + issued.ca_pem
    strange_ca = other.csr_pem("x").replace("CERTIFICATE REQUEST", "CERTIFICATE")
    for name, content, node, expected in (
        ("other-key", good_for_other, "n", "the certificate is for another key"),
        ("other-node", good_for_other, "m", "the certificate does not name node 'm'"),
        ("cert-only", issued.certificate_pem, "n", "holds 1 certificates, not 2"),
        ("swapped", issued.ca_pem + issued.certificate_pem, "n", "was not issued by the bundle's node CA"),
        ("garbage", strange_ca, "n", "not PEM certificates"),
        ("huge", "x" * (70 * 1024), "n", "larger than"),
    ):
        result = await install(name, content, node)
        assert result.returncode == 1, name
        assert expected in result.stderr, (name, result.stderr)
        assert "nothing was installed" in result.stderr, name
        assert not mine.cert.exists(), name
        assert not mine.ca.exists(), name
