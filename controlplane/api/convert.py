"""Admin API protobuf <-> rows and specs: the one place that conversion happens."""

from __future__ import annotations

from datetime import datetime
from typing import TypeVar

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from controlplane.db import models as db
from controlplane.errors import InvalidArgument
from controlplane.evidence.retention import PrunedStatement
from controlplane.services.groups import GroupChange, GroupInfo, GroupSpec
from controlplane.services.models import DeploymentSpec, ModelSpec
from controlplane.services.providers import ProviderSpec
from controlplane.snapshots import build
from controlplane.snapshots.history import Diff, key_ids
from dataplane.config.model import DeploymentMode
from dataplane.providers.sealing import key_id as sealing_key_id
from dataplane.snapshot.compile import MODE_FROM_PROTO, MODE_TO_PROTO
from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.common.v1 import common_pb2
from signalbox.api.config.v1 import snapshot_pb2

M = TypeVar("M", bound=Message)


def ts(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    out = Timestamp()
    out.FromDatetime(value)
    return out


def _mirror(message: Message, cls: type[M]) -> M:
    """Re-read a snapshot message as its admin twin.

    The admin API's Tenant, Provider and Model mirror the snapshot's field for field
    (same numbers and wire types; the admin Deployment.provider is the snapshot's
    provider_id), so the row -> protobuf conversion lives once, in snapshots.build.
    """
    return cls.FromString(message.SerializeToString())


def tenant(row: db.Tenant) -> admin_pb2.Tenant:
    msg = _mirror(build.tenant_pb(row), admin_pb2.Tenant)
    msg.created_at.CopyFrom(build.timestamp(row.created_at))
    return msg


def api_key(row: db.ApiKey) -> admin_pb2.ApiKey:
    return admin_pb2.ApiKey(
        id=str(row.id),
        tenant_id=str(row.tenant_id),
        name=row.name,
        prefix=row.prefix,
        scopes=list(row.scopes),
        created_at=ts(row.created_at),
        expires_at=ts(row.expires_at),
    )


def provider(row: db.Provider) -> admin_pb2.Provider:
    return _mirror(build.provider_pb(row), admin_pb2.Provider)


def provider_spec(msg: admin_pb2.Provider) -> ProviderSpec:
    return ProviderSpec(
        name=msg.name,
        type=msg.type,
        base_url=msg.base_url,
        credential_env=msg.credential.env,
        credential_file=msg.credential.file,
        credential_sealed=msg.credential.sealed if msg.credential.HasField("sealed") else None,
        settings=dict(msg.settings),
        timeout_ms=msg.timeout_ms,
        location=int(msg.location),
        site=msg.site,
        region=msg.region,
        jurisdiction=msg.jurisdiction,
    )


def model(row: db.Model) -> admin_pb2.Model:
    return _mirror(build.model_pb(row), admin_pb2.Model)


def model_spec(msg: admin_pb2.Model) -> ModelSpec:
    return ModelSpec(
        alias=msg.alias,
        deployments=tuple(
            DeploymentSpec(provider=d.provider, upstream_model=d.upstream_model, weight=d.weight)
            for d in msg.deployments
        ),
        capabilities=tuple(int(c) for c in msg.capabilities),
        context_window=msg.context_window,
        max_output_tokens=msg.max_output_tokens,
        input_price_nanos_per_mtok=msg.input_price_nanos_per_mtok,
        output_price_nanos_per_mtok=msg.output_price_nanos_per_mtok,
        cached_input_price_nanos_per_mtok=msg.cached_input_price_nanos_per_mtok,
        certified_for=tuple(int(c) for c in msg.certified_for),
        certifications=tuple(msg.certifications),
        typical_latency_ms=msg.typical_latency_ms,
        attributes=dict(msg.attributes),
    )


def policy(row: db.Policy) -> admin_pb2.Policy:
    return admin_pb2.Policy(
        id=str(row.id),
        tenant_id=str(row.tenant_id) if row.tenant_id is not None else "",
        version=row.version,
        document_json="" if row.deleted else row.document_json,
        created_at=ts(row.created_at),
        created_by=row.created_by,
    )


def node(row: db.Node) -> admin_pb2.Node:
    return admin_pb2.Node(
        node_id=row.node_id,
        software_version=row.software_version,
        mode=row.mode,  # type: ignore[arg-type]
        applied_version=row.applied_version,
        applied_hash=bytes(row.applied_hash),
        last_nack_version=row.last_nack_version,
        last_nack_reason=row.last_nack_reason,
        last_ack_at=ts(row.last_ack_at),
        last_nack_at=ts(row.last_nack_at),
        last_seen_at=ts(row.last_seen_at),
        connected=row.connected,
    )


def enroll_token(row: db.EnrollToken) -> admin_pb2.EnrollTokenInfo:
    """A token's metadata; the secret is not stored, so it cannot leak from here."""
    return admin_pb2.EnrollTokenInfo(
        id=row.id,
        group=row.node_group,
        mode=row.mode,
        site=row.site,
        created_at=ts(row.created_at),
        expires_at=ts(row.expires_at),
        created_by=row.created_by,
        used_at=ts(row.used_at),
        used_by=row.used_by or "",
    )


def snapshot_info(row: db.Snapshot) -> admin_pb2.SnapshotInfo:
    return admin_pb2.SnapshotInfo(
        node_group=row.node_group,
        version=row.version,
        payload_sha256=bytes(row.sha256),
        created_at=ts(row.created_at),
        signing_key_id=row.signing_key_id,
        size_bytes=len(row.payload),
        created_by=row.created_by,
        reason=row.reason,
        exported_at=ts(row.exported_at),
    )


def snapshot_content(snapshot: snapshot_pb2.Snapshot, prefixes: dict[str, str]) -> admin_pb2.SnapshotContent:
    """A snapshot's config in admin terms: keys without their hash, providers with their
    credential reference, deployments naming their provider, JWT issuers and mTLS mappings."""
    names = {p.id: p.name for p in snapshot.providers}
    models = []
    for m in snapshot.models:
        msg = _mirror(m, admin_pb2.Model)
        for d in msg.deployments:
            d.provider = names.get(d.provider, d.provider)
        models.append(msg)
    return admin_pb2.SnapshotContent(
        tenants=[_mirror(t, admin_pb2.Tenant) for t in snapshot.tenants],
        # Built field by field: the snapshot's ApiKey carries the hash, which never leaves.
        keys=[
            admin_pb2.ApiKey(
                id=k.id,
                tenant_id=k.tenant_id,
                name=k.name,
                prefix=prefixes.get(k.id, ""),
                scopes=list(k.scopes),
                expires_at=k.expires_at if k.HasField("expires_at") else None,
            )
            for k in snapshot.api_keys
        ],
        providers=[_mirror(p, admin_pb2.Provider) for p in snapshot.providers],
        models=models,
        policies=[
            admin_pb2.Policy(id=p.id, tenant_id=p.tenant_id, version=p.version, document_json=p.document_json)
            for p in snapshot.policies
        ],
        governance_profiles=[
            admin_pb2.GovernanceProfile(
                id=g.id, tenant_id=g.tenant_id, version=g.version, document_json=g.document_json
            )
            for g in snapshot.governance_profiles
        ],
        trusted_key_ids=[k.key_id for k in snapshot.trusted_keys],
        expires_at=snapshot.expires_at,
        jwt_issuers=[
            admin_pb2.JwtIssuerInfo(id=i.id, tenant_id=i.tenant_id, issuer=i.jwt, key_ids=key_ids(i.jwt))
            for i in snapshot.identities
            if i.WhichOneof("kind") == "jwt"
        ],
        mtls_mappings=[
            admin_pb2.MtlsMappingInfo(id=i.id, tenant_id=i.tenant_id, mapping=i.mtls)
            for i in snapshot.identities
            if i.WhichOneof("kind") == "mtls"
        ],
    )


def snapshot_diff(diff: Diff) -> admin_pb2.DiffSnapshotsResponse:
    return admin_pb2.DiffSnapshotsResponse(
        from_version=diff.from_version,
        to_version=diff.to_version,
        changes=[
            admin_pb2.ObjectChange(
                kind=c.kind,
                id=c.id,
                name=c.name,
                change=c.change,
                fields=[admin_pb2.FieldChange(field=f.field, old=f.old, new=f.new) for f in c.fields],
                document_diff=c.document_diff,
            )
            for c in diff.changes
        ],
    )


def signing_key(row: db.SigningKey) -> admin_pb2.SigningKeyInfo:
    """A signing key as the Admin API shows it: never its sealed private half."""
    return admin_pb2.SigningKeyInfo(
        key_id=row.key_id,
        state=row.state,
        created_at=ts(row.created_at),
        revoked_at=ts(row.revoked_at),
        ed25519_public_key=bytes(row.public_key),
    )


def _selection(names: tuple[str, ...] | None) -> admin_pb2.Selection:
    return admin_pb2.Selection(all=True) if names is None else admin_pb2.Selection(names=list(names))


def _listed(selection: admin_pb2.Selection, path: str) -> tuple[str, ...] | None:
    if selection.all:
        if selection.names:
            raise InvalidArgument(f"{path}.names", "must be empty when all is set")
        return None
    return tuple(selection.names)


def node_group(info: GroupInfo) -> admin_pb2.NodeGroup:
    row = info.row
    return admin_pb2.NodeGroup(
        name=row.name,
        mode=MODE_TO_PROTO[DeploymentMode(row.mode)],
        site=row.site,
        deployment=row.deployment,
        tenants=_selection(info.names["tenants"]),
        providers=_selection(info.names["providers"]),
        models=_selection(info.names["models"]),
        created_at=ts(row.created_at),
        snapshot_version=info.snapshot_version,
        nodes=info.nodes,
        sealing_public_key=bytes(row.sealing_public_key or b""),
        sealing_key_id=sealing_key_id(bytes(row.sealing_public_key)) if row.sealing_public_key else "",
    )


def _mode(value: int, path: str) -> DeploymentMode:
    mode = MODE_FROM_PROTO.get(value)
    if mode is None:
        raise InvalidArgument(path, "must be cloud, on-prem or air-gapped")
    return mode


def group_spec(msg: admin_pb2.NodeGroup) -> GroupSpec:
    """A create request's group; unset selections mean everything, unset mode cloud."""
    return GroupSpec(
        name=msg.name,
        mode=DeploymentMode.CLOUD if not msg.mode else _mode(msg.mode, "group.mode"),
        site=msg.site,
        deployment=msg.deployment,
        tenants=_listed(msg.tenants, "group.tenants") if msg.HasField("tenants") else None,
        providers=_listed(msg.providers, "group.providers") if msg.HasField("providers") else None,
        models=_listed(msg.models, "group.models") if msg.HasField("models") else None,
        sealing_public_key=msg.sealing_public_key or None,
    )


def group_change(msg: admin_pb2.UpdateNodeGroupRequest) -> GroupChange:
    return GroupChange(
        mode=_mode(msg.mode, "mode") if msg.HasField("mode") else None,
        site=msg.site if msg.HasField("site") else None,
        deployment=msg.deployment if msg.HasField("deployment") else None,
        lists={
            kind: _listed(getattr(msg, kind), kind)
            for kind in ("tenants", "providers", "models")
            if msg.HasField(kind)
        },
        sealing_public_key=msg.sealing_public_key if msg.HasField("sealing_public_key") else None,
    )


def mode_proto(mode: str) -> common_pb2.DeploymentMode.ValueType:
    """A stored mode name ("cloud", "on-prem", "air-gapped"; "" or unknown: unspecified)."""
    try:
        return MODE_TO_PROTO[DeploymentMode(mode)]
    except ValueError:
        return common_pb2.DEPLOYMENT_MODE_UNSPECIFIED


def evidence_record(row: db.EvidenceRecord) -> admin_pb2.EvidenceRecord:
    return admin_pb2.EvidenceRecord(
        chain_id=row.chain_id,
        seq=row.seq,
        record_id=row.record_id,
        ts=ts(row.ts),
        node_id=row.node_id,
        correlation_id=row.correlation_id,
        tenant_id=row.tenant_id,
        api_key_id=row.api_key_id,
        model=row.model,
        outcome=row.outcome,
        hash=bytes(row.hash),
        received_at=ts(row.received_at),
        body=bytes(row.body),
    )


def evidence_pruned_range(s: PrunedStatement) -> admin_pb2.EvidencePrunedRange:
    return admin_pb2.EvidencePrunedRange(
        chain_id=s.chain_id,
        first_seq=s.first_seq,
        last_seq=s.last_seq,
        last_hash=s.last_hash,
        pruned_before=ts(s.pruned_before),
        statement=s.envelope,
    )


def evidence_chain(row: db.EvidenceChain, alarms: int, stale: bool = False) -> admin_pb2.EvidenceChainStatus:
    return admin_pb2.EvidenceChainStatus(
        chain_id=row.chain_id,
        node_id=row.node_id,
        head_seq=row.head_seq,
        last_received_at=ts(row.last_received_at),
        state=row.state,
        alarm=row.alarm,
        alarms=alarms,
        stale=stale,
    )


# ---- caller identities (ident branch) ----


def jwt_issuer(row: db.TenantIdentity, snapshot_version: int = 0) -> admin_pb2.JwtIssuerInfo:
    issuer = snapshot_pb2.JwtIssuer.FromString(row.spec)
    return admin_pb2.JwtIssuerInfo(
        id=str(row.id),
        tenant_id=str(row.tenant_id),
        issuer=issuer,
        key_ids=key_ids(issuer),
        created_at=ts(row.created_at),
        snapshot_version=snapshot_version,
    )


def mtls_mapping(row: db.TenantIdentity, snapshot_version: int = 0) -> admin_pb2.MtlsMappingInfo:
    return admin_pb2.MtlsMappingInfo(
        id=str(row.id),
        tenant_id=str(row.tenant_id),
        mapping=snapshot_pb2.MtlsMapping.FromString(row.spec),
        created_at=ts(row.created_at),
        snapshot_version=snapshot_version,
    )


def require(field: str, value: str) -> None:
    """A request's ``field`` that must be given: INVALID_ARGUMENT naming it when empty."""
    if not value:
        raise InvalidArgument(field, "must not be empty")
