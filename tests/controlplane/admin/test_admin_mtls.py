"""Admin identities by client certificate: on an Admin API listener with a client CA, a
certificate whose URI SAN a platform admin mapped to an identity authenticates without a
token, with that identity's role and tenant; an unmapped SAN is UNAUTHENTICATED, and a
certificate of another CA never gets past the TLS handshake."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.tls import ClientTls, ServerTls, aio_channel
from tests.controlplane.conftest import Admin, admin_cli
from tests.fixtures.certs import Pem, TestCA
from tests.fixtures.postgres import cp_settings, running_control_plane

ALICE = "spiffe://corp.test/admin/alice"


async def test_a_mapped_client_certificate_is_an_admin_identity(
    database_url: str, private_tmp: Path, tmp_path: Path
) -> None:
    ca = TestCA(tmp_path / "ca")
    server = ca.issue("controlplane", server=True)
    operator = ca.issue("operator", server=False, uris=("spiffe://corp.test/ops/cli",))
    alice = ca.issue("alice", server=False, uris=(ALICE,))
    mallory = ca.issue("mallory", server=False, uris=("spiffe://corp.test/admin/mallory",))
    stranger_ca = TestCA(tmp_path / "other", name="Some Other CA")
    stranger = stranger_ca.issue("alice-forged", server=False, uris=(ALICE,))
    settings = cp_settings(
        database_url, private_tmp, tls=ServerTls(cert=server.cert, key=server.key, client_ca=ca.ca_file)
    )

    def tls(pem: Pem) -> ClientTls:
        return ClientTls(ca=ca.ca_file, cert=pem.cert, key=pem.key)

    async with running_control_plane(settings) as cp:
        async with aio_channel(cp.address, tls(operator)) as channel:
            platform = Admin(admin_pb2_grpc.AdminServiceStub(channel), cp.metadata)
            await platform.CreateTenant(admin_pb2.CreateTenantRequest(name="acme"))
            # The operator's certificate is not mapped: a token is still its credential.
            added = await platform.AddAdminMtlsIdentity(
                admin_pb2.AddAdminMtlsIdentityRequest(
                    uri=ALICE, name="alice", role="tenant_admin", tenant="acme"
                )
            )
            assert (added.uri, added.role) == (ALICE, "tenant_admin")
            with pytest.raises(grpc.aio.AioRpcError) as duplicate:
                await platform.AddAdminMtlsIdentity(
                    admin_pb2.AddAdminMtlsIdentityRequest(uri=ALICE, name="again", role="auditor")
                )
            assert duplicate.value.code() == grpc.StatusCode.ALREADY_EXISTS
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await platform.AddAdminMtlsIdentity(
                    admin_pb2.AddAdminMtlsIdentityRequest(uri="not a uri", name="x", role="auditor")
                )
            assert (bad.value.code(), (bad.value.details() or "").split(":")[0]) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "uri",
            )
            listed = await platform.ListAdminMtlsIdentities(admin_pb2.ListAdminMtlsIdentitiesRequest())
            assert [i.uri for i in listed.identities] == [ALICE]

        async with aio_channel(cp.address, tls(alice)) as channel:
            as_alice = Admin(admin_pb2_grpc.AdminServiceStub(channel), ())
            key = await as_alice.CreateApiKey(admin_pb2.CreateApiKeyRequest(name="svc"))
            assert key.secret
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await as_alice.CreateTenant(admin_pb2.CreateTenantRequest(name="other"))
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

        # The CLI with a certificate and no token.
        code, out, err = await admin_cli(
            cp.address,
            "",
            "--ca",
            str(ca.ca_file),
            "--client-cert",
            str(alice.cert),
            "--client-key",
            str(alice.key),
            "key",
            "list",
        )
        assert code == 0, err
        assert key.key.id in out

        async with aio_channel(cp.address, tls(mallory)) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as unmapped:
                await admin_pb2_grpc.AdminServiceStub(channel).ListTenants(
                    admin_pb2.ListTenantsRequest(), timeout=10
                )
            assert unmapped.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert unmapped.value.details() == "the client certificate is not mapped to an admin identity"

        async with aio_channel(
            cp.address, ClientTls(ca=ca.ca_file, cert=stranger.cert, key=stranger.key)
        ) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as forged:
                await admin_pb2_grpc.AdminServiceStub(channel).ListTenants(
                    admin_pb2.ListTenantsRequest(), timeout=10
                )
            # TLS refuses it before any RPC runs: no status of ours, nothing served.
            assert forged.value.code() == grpc.StatusCode.UNAVAILABLE

        async with aio_channel(cp.address, tls(operator)) as channel:
            platform = Admin(admin_pb2_grpc.AdminServiceStub(channel), cp.metadata)
            rows = (
                await platform.ListAdminAudit(admin_pb2.ListAdminAuditRequest(actor="admin:alice"))
            ).entries
            assert [(r.action, r.actor_role, r.result) for r in reversed(rows)] == [
                ("CreateApiKey", "tenant_admin", "OK"),
                ("CreateTenant", "tenant_admin", "PERMISSION_DENIED"),
                ("ListApiKeys", "tenant_admin", "OK"),
            ]
            await platform.RemoveAdminMtlsIdentity(admin_pb2.RemoveAdminMtlsIdentityRequest(id=added.id))

        async with aio_channel(cp.address, tls(alice)) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as removed:
                await admin_pb2_grpc.AdminServiceStub(channel).ListApiKeys(
                    admin_pb2.ListApiKeysRequest(), timeout=10
                )
            assert removed.value.code() == grpc.StatusCode.UNAUTHENTICATED
