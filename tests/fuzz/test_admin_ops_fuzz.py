"""Property-based fuzzing of the Admin API's operational RPCs: node identity (enrollment
tokens, CertifyNode with hostile CSRs), snapshot history (Get, List pages, Diff, Rollback
by version and group), evidence reads (Query, Export, usage reports, audit) and pruning,
admin tokens and admin mTLS identities, nodes by group.

As ``test_admin_fuzz``: a defined status and a bounded message naming the field or rule,
nothing written when refused (reads write nothing at all), the server serving after.
"""

from __future__ import annotations

import base64
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from signalbox.api.admin.v1 import admin_pb2
from tests.controlplane.conftest import Admin
from tests.fixtures.postgres import RunningControlPlane
from tests.fuzz.admin_harness import (
    call,
    check_read,
    check_write,
    config_state,
    mostly,
    names,
    odd_text,
    still_serves,
    timestamps,
    uint32,
    uint64,
)
from tests.fuzz.conftest import ADMIN_EXAMPLES

OK = grpc.StatusCode.OK

# ---- node identity ----


def _csr(key: Any, cn: str = "node-1", sans: int = 0, algorithm: Any = None) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(f"n{i}.test") for i in range(sans)]), critical=False
        )
    signed = builder.sign(key, algorithm)
    return signed.public_bytes(serialization.Encoding.PEM).decode()


def _tampered(pem: str) -> str:
    body = "".join(pem.splitlines()[1:-1])
    der = bytearray(base64.b64decode(body))
    der[-3] ^= 0xFF  # inside the signature
    lines = [base64.b64encode(bytes(der)).decode()[i : i + 64] for i in range(0, len(der) * 2, 64)]
    return "\n".join(
        ["-----BEGIN CERTIFICATE REQUEST-----", *[x for x in lines if x], "-----END CERTIFICATE REQUEST-----"]
    )


_P256 = ec.generate_private_key(ec.SECP256R1())
_GOOD_CSR = _csr(_P256, algorithm=hashes.SHA256())
CSRS = [
    _GOOD_CSR,
    _csr(_P256, cn="x" * 64, sans=50, algorithm=hashes.SHA256()),
    _csr(ec.generate_private_key(ec.SECP384R1()), algorithm=hashes.SHA384()),
    _csr(ed25519.Ed25519PrivateKey.generate()),
    _csr(rsa.generate_private_key(public_exponent=65537, key_size=1024), algorithm=hashes.SHA256()),
    _tampered(_GOOD_CSR),
    _GOOD_CSR.replace("REQUEST", "CERTIFICATE"),
    _GOOD_CSR[: len(_GOOD_CSR) // 2],
    "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    "-----BEGIN CERTIFICATE REQUEST-----\n" + "A" * 20_000 + "\n-----END CERTIFICATE REQUEST-----\n",
    "junk before\n" + _GOOD_CSR + "junk after\n",
    _GOOD_CSR + _GOOD_CSR,
]
csrs = (
    st.sampled_from(CSRS)
    | odd_text
    | st.binary(max_size=200).map(
        lambda b: (
            "-----BEGIN CERTIFICATE REQUEST-----\n"
            + base64.b64encode(b).decode()
            + "\n-----END CERTIFICATE REQUEST-----\n"
        )
    )
)
_groups = st.sampled_from(["default", ""]) | odd_text


@settings(max_examples=ADMIN_EXAMPLES)
@given(
    fields=mostly(
        {
            "group": st.sampled_from(["default"]),
            "ttl_seconds": st.sampled_from([1, 3600, 7 * 86400]),
            "mode": st.sampled_from(["", "cloud"]),
            "site": st.sampled_from([""]),
        },
        {
            "group": _groups,
            "ttl_seconds": uint64,
            "mode": st.sampled_from(["on-prem", "air-gapped", "CLOUD"]) | odd_text,
            "site": odd_text,
        },
    )
)
async def test_create_enroll_token(
    seeded: Admin, control_plane: RunningControlPlane, fields: dict[str, Any]
) -> None:
    request = admin_pb2.CreateEnrollTokenRequest(**fields)
    code, reply = await check_write(
        seeded, control_plane.database_url, lambda: seeded.CreateEnrollToken(request)
    )
    if code == OK:
        assert reply.token.startswith("sbx_enroll_")
        listed = await seeded.ListEnrollTokens(admin_pb2.ListEnrollTokensRequest())
        assert reply.info.id in {t.id for t in listed.tokens}


@settings(max_examples=ADMIN_EXAMPLES)
@given(
    fields=mostly(
        {
            "node_id": st.sampled_from(["node-1", "node-2"]),
            "csr_pem": st.sampled_from(CSRS[:2]),
            "group": st.sampled_from(["default"]),
            "ttl_seconds": st.sampled_from([0, 86400]),
        },
        {"node_id": odd_text, "csr_pem": csrs, "group": _groups, "ttl_seconds": uint64},
    )
)
async def test_certify_node(
    seeded: Admin, control_plane: RunningControlPlane, fields: dict[str, Any]
) -> None:
    request = admin_pb2.CertifyNodeRequest(**fields)
    code, reply = await check_write(seeded, control_plane.database_url, lambda: seeded.CertifyNode(request))
    if code == OK:
        assert "BEGIN CERTIFICATE" in reply.certificate_pem
    revoke = admin_pb2.RevokeNodeRequest(node_id=fields["node_id"])
    await check_write(seeded, control_plane.database_url, lambda: seeded.RevokeNode(revoke))


# ---- snapshot history ----


@settings(max_examples=ADMIN_EXAMPLES)
@given(
    version=st.sampled_from([0, 1, 2, 3, 4, 1000]) | uint64,
    other=st.sampled_from([0, 1, 2, 3]) | uint64,
    group=st.sampled_from(["", "default", "nope"]) | odd_text,
    limit=st.sampled_from([0, 1, 2, 1000, 1001]) | uint32,
    content=st.booleans(),
    rollback=st.booleans(),
)
async def test_snapshot_history(
    seeded: Admin,
    control_plane: RunningControlPlane,
    version: int,
    other: int,
    group: str,
    limit: int,
    content: bool,
    rollback: bool,
) -> None:
    url = control_plane.database_url
    get = admin_pb2.GetSnapshotRequest(version=version, include_content=content, group=group)
    await check_read(seeded, url, lambda: seeded.GetSnapshot(get))
    page = admin_pb2.ListSnapshotsRequest(limit=limit, before=version, group=group)
    code, reply = await check_read(seeded, url, lambda: seeded.ListSnapshots(page))
    if code == OK:
        assert len(reply.snapshots) <= (limit or 20)
        assert all(s.version < version for s in reply.snapshots) or not version
    diff = admin_pb2.DiffSnapshotsRequest(from_version=other, to_version=version, group=group)
    await check_read(seeded, url, lambda: seeded.DiffSnapshots(diff))
    # An export marks the snapshot exported (an air-gapped pin): a write.
    export = admin_pb2.ExportSnapshotRequest(group=group)
    await check_write(seeded, url, lambda: seeded.ExportSnapshot(export))
    await check_read(seeded, url, lambda: seeded.ListNodes(admin_pb2.ListNodesRequest(group=group)))
    if rollback:
        # A rollback may take acme away (to a version before it): forward again to the
        # config every example starts from before the server is asked for it.
        latest = await seeded.latest_version()
        before = config_state(url)
        request = admin_pb2.RollbackSnapshotRequest(version=version, group=group)
        code, reply = await call(seeded.RollbackSnapshot(request))
        if code == OK:
            assert (reply.restored_from, reply.snapshot_version > latest) == (version, True)
            await seeded.RollbackSnapshot(admin_pb2.RollbackSnapshotRequest(version=latest, group=group))
        else:
            assert config_state(url) == before
        await still_serves(seeded)


# ---- evidence ----

_ids = st.sampled_from(["", "acme", "00000000-0000-0000-0000-000000000000"]) | odd_text
_times = st.none() | timestamps


def _filters(**more: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "correlation_id": _ids,
            "tenant_id": _ids,
            "api_key_id": _ids,
            "model": st.sampled_from(["", "small"]) | odd_text,
            "outcome": st.sampled_from(["", "OK", "PERMISSION_DENIED"]) | odd_text,
            "since": _times,
            "until": _times,
            **more,
        }
    )


def _set(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


@settings(max_examples=ADMIN_EXAMPLES)
@given(
    query=_filters(limit=st.sampled_from([0, 1, 1000, 1001]) | uint32),
    by=st.lists(st.sampled_from(["day", "tenant", "key", "model"]) | odd_text, max_size=5),
    audit=st.fixed_dictionaries(
        {
            "actor": st.sampled_from(["", "admin:tests", "anonymous"]) | odd_text,
            "tenant": _ids,
            "action": st.sampled_from(["", "CreateTenant"]) | odd_text,
            "since": _times,
            "until": _times,
            "limit": st.sampled_from([0, 1, 1000, 1001]) | uint32,
        }
    ),
)
async def test_evidence_reads(
    seeded: Admin,
    control_plane: RunningControlPlane,
    query: dict[str, Any],
    by: list[str],
    audit: dict[str, Any],
) -> None:
    url = control_plane.database_url
    records = admin_pb2.QueryEvidenceRequest(**_set(query))
    await check_read(seeded, url, lambda: seeded.QueryEvidence(records))
    limit = query.pop("limit")
    usage = admin_pb2.GetUsageRequest(
        **_set({k: query[k] for k in ("tenant_id", "api_key_id", "model", "since", "until")}), by=by
    )
    await check_read(seeded, url, lambda: seeded.GetUsage(usage))
    export = admin_pb2.ExportEvidenceRequest(**_set(query))

    async def chunks() -> list[admin_pb2.EvidencePackChunk]:
        return [chunk async for chunk in seeded.ExportEvidence(export)]

    code, reply = await check_read(seeded, url, chunks)
    if code == OK:
        assert reply
        assert reply[0].pack_id
    trail = admin_pb2.ListAdminAuditRequest(**_set(audit))
    code, reply = await check_read(seeded, url, lambda: seeded.ListAdminAudit(trail))
    if code == OK:
        assert len(reply.entries) <= (audit["limit"] or 100)
    del limit


@settings(max_examples=ADMIN_EXAMPLES)
@given(before=st.none() | timestamps)
async def test_prune_evidence(seeded: Admin, control_plane: RunningControlPlane, before: Any) -> None:
    request = admin_pb2.PruneEvidenceRequest(**_set({"before": before}))
    await check_write(seeded, control_plane.database_url, lambda: seeded.PruneEvidence(request))


# ---- admin security ----

_roles = st.sampled_from(["platform_admin", "tenant_admin", "auditor"])


@settings(max_examples=ADMIN_EXAMPLES)
@given(
    token=mostly(
        {"name": st.sampled_from(["ops", "ci-bot"]), "role": _roles, "tenant": st.sampled_from(["", "acme"])},
        {"name": names, "role": st.sampled_from(["root", "Auditor", ""]) | odd_text, "tenant": _ids},
    ),
    identity=mostly(
        {
            "uri": st.sampled_from(["spiffe://corp/admin/alice", "spiffe://corp/admin/bob"]),
            "name": st.sampled_from(["alice", "bob"]),
            "role": _roles,
            "tenant": st.sampled_from(["", "acme"]),
        },
        {
            "uri": st.sampled_from(["alice", "spiffe://", "https://x y"]) | odd_text,
            "name": names,
            "role": st.sampled_from(["root", ""]) | odd_text,
            "tenant": _ids,
        },
    ),
)
async def test_admin_tokens_and_mtls_identities(
    seeded: Admin, control_plane: RunningControlPlane, token: dict[str, str], identity: dict[str, str]
) -> None:
    url = control_plane.database_url
    secrets = (control_plane.token,)
    request = admin_pb2.CreateAdminTokenRequest(**token)
    code, reply = await check_write(seeded, url, lambda: seeded.CreateAdminToken(request), secrets=secrets)
    if code == OK:
        assert reply.token.startswith("sbxadm_")
        await seeded.RevokeAdminToken(admin_pb2.RevokeAdminTokenRequest(id=reply.info.id))
        # A revoked token is refused, with a message that does not carry it.
        code, _ = await call(
            seeded.with_token(reply.token).ListTenants(admin_pb2.ListTenantsRequest()), secrets=(reply.token,)
        )
        assert code != OK
    listing = admin_pb2.ListAdminTokensRequest(tenant=token["tenant"])
    await check_read(seeded, url, lambda: seeded.ListAdminTokens(listing))
    add = admin_pb2.AddAdminMtlsIdentityRequest(**identity)
    code, reply = await check_write(seeded, url, lambda: seeded.AddAdminMtlsIdentity(add), secrets=secrets)
    if code == OK:
        await seeded.RemoveAdminMtlsIdentity(admin_pb2.RemoveAdminMtlsIdentityRequest(id=reply.id))


# ---- removals and revocations by whatever id ----

_REMOVALS = {
    "DeleteApiKey": lambda ref: admin_pb2.DeleteApiKeyRequest(id=ref),
    "RemoveJwtIssuer": lambda ref: admin_pb2.RemoveJwtIssuerRequest(id=ref),
    "RemoveMtlsMapping": lambda ref: admin_pb2.RemoveMtlsMappingRequest(id=ref),
    "RevokeAdminToken": lambda ref: admin_pb2.RevokeAdminTokenRequest(id=ref),
    "RemoveAdminMtlsIdentity": lambda ref: admin_pb2.RemoveAdminMtlsIdentityRequest(id=ref),
    "RevokeSigningKey": lambda ref: admin_pb2.RevokeSigningKeyRequest(key_id=ref),
    "RevokeNode": lambda ref: admin_pb2.RevokeNodeRequest(node_id=ref),
    "DeleteNodeGroup": lambda ref: admin_pb2.DeleteNodeGroupRequest(name=ref),
    "DeletePolicy": lambda ref: admin_pb2.DeletePolicyRequest(tenant=ref),
    "DeleteGovernanceProfile": lambda ref: admin_pb2.DeleteGovernanceProfileRequest(tenant=ref),
    "GetPolicy": lambda ref: admin_pb2.GetPolicyRequest(tenant=ref),
    "ListPolicyHistory": lambda ref: admin_pb2.ListPolicyHistoryRequest(tenant=ref),
    "ListApiKeys": lambda ref: admin_pb2.ListApiKeysRequest(tenant=ref),
    "ListJwtIssuers": lambda ref: admin_pb2.ListJwtIssuersRequest(tenant=ref),
    "ListMtlsMappings": lambda ref: admin_pb2.ListMtlsMappingsRequest(tenant=ref),
    "DeleteModel": lambda ref: admin_pb2.DeleteModelRequest(model=ref),
    "DeleteProvider": lambda ref: admin_pb2.DeleteProviderRequest(provider=ref),
}


@settings(max_examples=ADMIN_EXAMPLES)
@given(
    method=st.sampled_from(sorted(_REMOVALS)),
    ref=st.sampled_from(["00000000-0000-0000-0000-000000000000", "0" * 36, "{}", "default"]) | odd_text,
    version=uint32,
)
async def test_removals_by_any_reference(
    seeded: Admin, control_plane: RunningControlPlane, method: str, ref: str, version: int
) -> None:
    request = _REMOVALS[method](ref)
    await check_write(seeded, control_plane.database_url, lambda: getattr(seeded, method)(request))
    retire = admin_pb2.RetireApiKeyHashKeyRequest(version=version)
    await check_write(seeded, control_plane.database_url, lambda: seeded.RetireApiKeyHashKey(retire))
