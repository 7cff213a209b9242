"""Compile the database into a ``Snapshot`` message: the one place rows become protobuf.

At fleet scale (10,000 tenants, 50,000 API keys, 1,000 models: an 8 MB payload) this is
on the path of every admin change, so ``build_snapshot`` reads plain tuples with SQL (no
ORM objects: loading 50,000 ``ApiKey`` objects alone took a quarter of a second), the
deployments of every model in one query, each table as one JSON text that Postgres
aggregates, so the event loop receives strings and parses no rows. Decoding and the
protobuf assembly, the CPU-heavy part, run in a worker thread. The row order matches the repositories'
listing order (``describe_path`` names a snapshot path by its index).

The ``*_pb`` functions convert one ORM object (the Admin API's replies mirror them) and
share their field mapping with the bulk path.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import ApiKey, Model, Policy, Provider, Tenant
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


def _micros_timestamp(micros: int) -> Timestamp:
    seconds, rest = divmod(micros, 1_000_000)
    return Timestamp(seconds=seconds, nanos=rest * 1000)


def tenant_pb(row: Tenant) -> snapshot_pb2.Tenant:
    return _tenant(
        (
            str(row.id),
            row.name,
            row.tier,
            row.active,
            row.labels,
            row.evidence_content,
            row.evidence_spool_full,
            row.limits,
        )
    )


EVIDENCE_CONTENT = {
    "digest": snapshot_pb2.EVIDENCE_CONTENT_DIGEST,
    "full": snapshot_pb2.EVIDENCE_CONTENT_FULL,
}
SPOOL_FULL = {
    "serve_and_alarm": snapshot_pb2.SPOOL_FULL_SERVE_AND_ALARM,
    "refuse": snapshot_pb2.SPOOL_FULL_REFUSE,
}


def _tenant(r: Sequence[Any]) -> snapshot_pb2.Tenant:
    tenant = snapshot_pb2.Tenant(id=r[0], name=r[1], tier=r[2], active=r[3], labels=r[4])
    content, spool_full = EVIDENCE_CONTENT[r[5]], SPOOL_FULL[r[6]]
    if content or spool_full:
        # Only when not the defaults: a tenant's snapshot bytes do not change otherwise.
        tenant.evidence.content, tenant.evidence.spool_full = content, spool_full
    if r[7]:
        tenant.limits.CopyFrom(limits_pb(r[7]))
    return tenant


# ---- limits (limits branch) ----
LIMIT_FIELDS = ("requests_per_minute", "tokens_per_minute", "budget_day_nanos", "budget_month_nanos")
"""The numeric fields of ``Limits``, as the ``limits`` JSON columns name them too."""
ON_UNREACHABLE = {
    "fail_open": snapshot_pb2.ON_UNREACHABLE_FAIL_OPEN,
    "fail_closed": snapshot_pb2.ON_UNREACHABLE_FAIL_CLOSED,
}


def limits_pb(stored: dict[str, Any]) -> snapshot_pb2.Limits:
    """A ``limits`` column (tenants, api_keys) as the snapshot carries it."""
    limits = snapshot_pb2.Limits()
    for name in LIMIT_FIELDS:
        setattr(limits, name, int(stored.get(name, 0)))
    limits.on_unreachable = ON_UNREACHABLE[stored.get("on_unreachable", "fail_open")]
    return limits


# ---- limits (end) ----


def api_key_pb(row: ApiKey) -> snapshot_pb2.ApiKey:
    hmac_digest = row.secret_hmac is not None
    digest = bytes(row.secret_hmac if row.secret_hmac is not None else row.secret_sha256 or b"")
    key = _api_key(
        (str(row.id), str(row.tenant_id), digest, row.name, row.scopes, None, hmac_digest, row.limits)
    )
    if row.expires_at is not None:
        key.expires_at.CopyFrom(timestamp(row.expires_at))
    return key


def _api_key(r: Sequence[Any]) -> snapshot_pb2.ApiKey:
    # r[2] is the key's digest: HMAC-SHA256 under the hash key when r[6], else the SHA-256
    # of a key of the earlier format (controlplane.api_key_hash).
    if r[6]:
        key = snapshot_pb2.ApiKey(id=r[0], tenant_id=r[1], secret_hmac=r[2], name=r[3], scopes=r[4])
    else:
        key = snapshot_pb2.ApiKey(id=r[0], tenant_id=r[1], secret_sha256=r[2], name=r[3], scopes=r[4])
    if r[5] is not None:
        key.expires_at.CopyFrom(_micros_timestamp(r[5]))
    if r[7]:
        key.limits.CopyFrom(limits_pb(r[7]))
    return key


def secret_ref_pb(env: str, file: str, sealed: bytes | None = None) -> snapshot_pb2.SecretRef:
    if sealed:
        return snapshot_pb2.SecretRef(sealed=snapshot_pb2.SealedSecret.FromString(sealed))
    if env:
        return snapshot_pb2.SecretRef(env=env)
    if file:
        return snapshot_pb2.SecretRef(file=file)
    return snapshot_pb2.SecretRef()


def provider_pb(row: Provider) -> snapshot_pb2.Provider:
    return _provider(
        (
            str(row.id),
            row.name,
            row.type,
            row.base_url,
            row.credential_env,
            row.credential_file,
            row.settings,
            row.timeout_ms,
            row.location,
            row.site,
            row.region,
            row.jurisdiction,
            row.credential_sealed.hex() if row.credential_sealed is not None else None,
        )
    )


def _provider(r: Sequence[Any]) -> snapshot_pb2.Provider:
    return snapshot_pb2.Provider(
        id=r[0],
        name=r[1],
        type=r[2],
        base_url=r[3],
        credential=secret_ref_pb(r[4], r[5], bytes.fromhex(r[12]) if r[12] else None),
        settings=r[6],
        timeout_ms=r[7],
        location=r[8],
        site=r[9],
        region=r[10],
        jurisdiction=r[11],
    )


def model_pb(row: Model) -> snapshot_pb2.Model:
    deployments = [(str(d.id), str(d.provider_id), d.upstream_model, d.weight) for d in row.deployments]
    return _model(
        (
            str(row.id),
            row.alias,
            row.capabilities,
            row.context_window,
            row.max_output_tokens,
            row.input_price_nanos_per_mtok,
            row.output_price_nanos_per_mtok,
            row.cached_input_price_nanos_per_mtok,
            row.certified_for,
            row.certifications,
            row.typical_latency_ms,
            row.attributes,
        ),
        deployments,
    )


def _model(r: Sequence[Any], deployments: Sequence[Sequence[Any]]) -> snapshot_pb2.Model:
    return snapshot_pb2.Model(
        id=r[0],
        alias=r[1],
        capabilities=r[2],
        context_window=r[3],
        max_output_tokens=r[4],
        input_price_nanos_per_mtok=r[5],
        output_price_nanos_per_mtok=r[6],
        cached_input_price_nanos_per_mtok=r[7],
        deployments=[
            snapshot_pb2.Deployment(id=d[0], provider_id=d[1], upstream_model=d[2], weight=d[3])
            for d in deployments
        ],
        certified_for=r[8],
        certifications=r[9],
        typical_latency_ms=r[10],
        attributes=r[11],
    )


def policy_pb(row: Policy) -> snapshot_pb2.Policy:
    return _policy(
        (str(row.id), str(row.tenant_id) if row.tenant_id is not None else "", row.version, row.document_json)
    )


def _policy(r: Sequence[Any]) -> snapshot_pb2.Policy:
    return snapshot_pb2.Policy(id=r[0], tenant_id=r[1], version=r[2], document_json=r[3])


# Orders match the repositories' list functions (controlplane.repositories.config). Each
# query returns its whole table as ONE JSON text (rows as arrays), built by Postgres: the
# event loop only receives a string, and decoding it (json.loads, in C) and the protobuf
# assembly run in a worker thread. Parsing 50,000 rows one by one in the driver blocked
# the event loop for hundreds of ms. Bytes travel as hex, times as epoch microseconds.
# (columns, FROM clause, order)
_TENANTS = (
    "id::text, name, tier, active, labels, evidence_content, evidence_spool_full, limits",
    "tenants",
    "name",
)
_API_KEYS = (
    "id::text, tenant_id::text, encode(coalesce(secret_hmac, secret_sha256), 'hex'), name, scopes,"
    " (extract(epoch FROM expires_at) * 1000000)::bigint, secret_hmac IS NOT NULL, limits",
    "api_keys",
    "created_at, id",
)
_PROVIDERS = (
    "id::text, name, type, base_url, credential_env, credential_file, settings, timeout_ms,"
    " location, site, region, jurisdiction, encode(credential_sealed, 'hex')",
    "providers",
    "name",
)
_MODELS = (
    "id::text, alias, capabilities, context_window, max_output_tokens,"
    " input_price_nanos_per_mtok, output_price_nanos_per_mtok, cached_input_price_nanos_per_mtok,"
    " certified_for, certifications, typical_latency_ms, attributes",
    "models",
    "alias",
)
_DEPLOYMENTS = (
    "model_id::text, id::text, provider_id::text, upstream_model, weight",
    "deployments",
    "model_id, position",
)
_POLICIES = (
    "p.id::text, coalesce(p.tenant_id::text, ''), p.version, p.document_json",
    "policies p JOIN (SELECT tenant_id, max(version) AS version FROM policies GROUP BY tenant_id) n"
    " ON p.version = n.version AND p.tenant_id IS NOT DISTINCT FROM n.tenant_id WHERE NOT p.deleted",
    "p.tenant_id NULLS FIRST",
)


CHUNK_ROWS = 5000
"""Rows per JSON text: ``json.loads`` holds the GIL for a whole text (~8 ms per 5,000 keys),
and the event loop waits for the GIL that long."""


async def _rows(session: AsyncSession, query: tuple[str, str, str]) -> list[str]:
    """The query's rows, in its order, as JSON arrays of at most ``CHUNK_ROWS`` row arrays."""
    columns, source, order = query
    sql = (
        f"SELECT json_agg(a ORDER BY n)::text FROM (SELECT json_build_array({columns}) AS a,"
        f" row_number() OVER (ORDER BY {order}) AS n FROM {source}) t"
        f" GROUP BY (n - 1) / {CHUNK_ROWS} ORDER BY (n - 1) / {CHUNK_ROWS}"
    )
    return [str(chunk) for chunk in (await session.scalars(text(sql))).all()]


def _decode(chunks: list[str]) -> list[list[Any]]:
    return [row for chunk in chunks for row in json.loads(chunk)]


def _assemble(
    head: snapshot_pb2.Snapshot,
    tenants: list[str],
    keys: list[str],
    providers: list[str],
    models: list[str],
    deployments: list[str],
    policies: list[str],
) -> snapshot_pb2.Snapshot:
    by_model: dict[str, list[list[Any]]] = defaultdict(list)
    for d in _decode(deployments):
        by_model[d[0]].append(d[1:])
    head.tenants.extend(_tenant(r) for r in _decode(tenants))
    key_rows = _decode(keys)
    for r in key_rows:
        r[2] = bytes.fromhex(r[2])
    head.api_keys.extend(_api_key(r) for r in key_rows)
    head.providers.extend(_provider(r) for r in _decode(providers))
    head.models.extend(_model(r, by_model.get(r[0], ())) for r in _decode(models))
    head.policies.extend(_policy(r) for r in _decode(policies))
    return head


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
    head = snapshot_pb2.Snapshot(
        version=version,
        created_at=timestamp(created_at),
        expires_at=timestamp(expires_at),
        previous_hash=previous_hash,
        scope=scope,
        trusted_keys=[
            snapshot_pb2.TrustedKey(key_id=kid, ed25519_public_key=pub, state=TRUSTED_KEY_STATE[state])
            for kid, pub, state in trusted
        ],
    )
    rows = [
        await _rows(session, query)
        for query in (_TENANTS, _API_KEYS, _PROVIDERS, _MODELS, _DEPLOYMENTS, _POLICIES)
    ]
    return await asyncio.to_thread(_assemble, head, *rows)
