"""Compile the database into a ``Snapshot`` message: the one place rows become protobuf."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import ApiKey, Model, Policy, Provider, Tenant
from controlplane.repositories import config as repo
from signalbox.api.config.v1 import snapshot_pb2

TRUSTED_KEY_STATE = {
    "active": snapshot_pb2.TRUSTED_KEY_STATE_ACTIVE,
    "retiring": snapshot_pb2.TRUSTED_KEY_STATE_RETIRING,
    "revoked": snapshot_pb2.TRUSTED_KEY_STATE_REVOKED,
}


def timestamp(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def tenant_pb(row: Tenant) -> snapshot_pb2.Tenant:
    return snapshot_pb2.Tenant(
        id=str(row.id), name=row.name, tier=row.tier, active=row.active, labels=dict(row.labels)
    )


def api_key_pb(row: ApiKey) -> snapshot_pb2.ApiKey:
    key = snapshot_pb2.ApiKey(
        id=str(row.id),
        tenant_id=str(row.tenant_id),
        secret_sha256=bytes(row.secret_sha256),
        name=row.name,
        scopes=list(row.scopes),
    )
    if row.expires_at is not None:
        key.expires_at.CopyFrom(timestamp(row.expires_at))
    return key


def secret_ref_pb(env: str, file: str) -> snapshot_pb2.SecretRef:
    if env:
        return snapshot_pb2.SecretRef(env=env)
    if file:
        return snapshot_pb2.SecretRef(file=file)
    return snapshot_pb2.SecretRef()


def provider_pb(row: Provider) -> snapshot_pb2.Provider:
    return snapshot_pb2.Provider(
        id=str(row.id),
        name=row.name,
        type=row.type,
        base_url=row.base_url,
        credential=secret_ref_pb(row.credential_env, row.credential_file),
        settings=dict(row.settings),
        timeout_ms=row.timeout_ms,
        location=row.location,  # type: ignore[arg-type]
        site=row.site,
        region=row.region,
        jurisdiction=row.jurisdiction,
    )


def model_pb(row: Model) -> snapshot_pb2.Model:
    return snapshot_pb2.Model(
        id=str(row.id),
        alias=row.alias,
        capabilities=list(row.capabilities),
        context_window=row.context_window,
        max_output_tokens=row.max_output_tokens,
        input_price_nanos_per_mtok=row.input_price_nanos_per_mtok,
        output_price_nanos_per_mtok=row.output_price_nanos_per_mtok,
        cached_input_price_nanos_per_mtok=row.cached_input_price_nanos_per_mtok,
        deployments=[
            snapshot_pb2.Deployment(
                id=str(d.id), provider_id=str(d.provider_id), upstream_model=d.upstream_model, weight=d.weight
            )
            for d in row.deployments
        ],
        certified_for=list(row.certified_for),
        certifications=list(row.certifications),
        typical_latency_ms=row.typical_latency_ms,
        attributes=dict(row.attributes),
    )


def policy_pb(row: Policy) -> snapshot_pb2.Policy:
    return snapshot_pb2.Policy(
        id=str(row.id),
        tenant_id=str(row.tenant_id) if row.tenant_id is not None else "",
        version=row.version,
        document_json=row.document_json,
    )


async def build_snapshot(
    session: AsyncSession,
    *,
    version: int,
    previous_hash: bytes,
    created_at: datetime,
    expires_at: datetime,
    scope: snapshot_pb2.Scope,
    trusted: Sequence[tuple[str, bytes, str]],
) -> snapshot_pb2.Snapshot:
    """Everything a node needs, read from ``session`` (which must hold the config lock)."""
    tenants = await repo.list_tenants(session)
    return snapshot_pb2.Snapshot(
        version=version,
        created_at=timestamp(created_at),
        expires_at=timestamp(expires_at),
        previous_hash=previous_hash,
        scope=scope,
        tenants=[tenant_pb(t) for t in tenants],
        api_keys=[api_key_pb(k) for k in await repo.list_api_keys(session)],
        providers=[provider_pb(p) for p in await repo.list_providers(session)],
        models=[model_pb(m) for m in await repo.list_models(session)],
        policies=[policy_pb(p) for p in await repo.current_policies(session)],
        trusted_keys=[
            snapshot_pb2.TrustedKey(key_id=kid, ed25519_public_key=pub, state=TRUSTED_KEY_STATE[state])
            for kid, pub, state in trusted
        ],
    )
