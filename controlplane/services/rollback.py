"""Rollback: write a stored snapshot's config back into the config tables, then publish.

The config tables are the system of record, so a rollback restores *them* (one unit of
work, under the config lock) and the normal publish path compiles, checks, signs and
announces the result as a new, higher version. After it, ``tenant list`` and friends
show exactly what nodes run.

Two deliberate differences from a byte-for-byte copy:

- API keys deleted since that version stay deleted. A deletion is a revocation (often
  of a leaked key); undoing a config mistake must not silently re-arm a credential. The
  rollback reports the keys it did not restore; everything else about surviving keys
  (name, scopes, expiry) is restored, and keys created since are removed.
- Policies are append-only history: a tenant whose current document differs gets a new
  policy version carrying the old document (or a deletion marker), never a reused number.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC

from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import ApiKey, Deployment, Model, Policy, Provider, Tenant
from controlplane.errors import NotFound
from controlplane.repositories import config as repo
from controlplane.repositories import snapshots as snapshot_repo
from controlplane.services.base import Caller, UnitOfWork
from controlplane.snapshots.history import decode
from signalbox.api.config.v1 import snapshot_pb2


@dataclass(frozen=True, slots=True)
class RollbackResult:
    version: int
    """The new version carrying the restored config."""
    restored_from: int
    keys_not_restored: tuple[str, ...]


def _id(value: str) -> uuid.UUID:
    return uuid.UUID(value)


def _temp_name(ident: uuid.UUID) -> str:
    # Unique, and not a valid admin name (starts with '~'): it never survives the flush below.
    return f"~rollback~{ident.hex}"


async def _renamed_apart(session: AsyncSession, rows: dict[uuid.UUID, tuple[object, str, str]]) -> None:
    """Give rows whose name changes a unique temporary one first, so swaps and reuses of a
    name between objects never hit the unique constraint mid-way."""
    moved = False
    for ident, (row, attr, wanted) in rows.items():
        if getattr(row, attr) != wanted:
            setattr(row, attr, _temp_name(ident))
            moved = True
    if moved:
        await session.flush()


async def restore(session: AsyncSession, snapshot: snapshot_pb2.Snapshot, actor: str) -> tuple[str, ...]:
    """Make the config tables say what ``snapshot`` says (see the module docstring for the
    two exceptions). The caller holds the config lock. Returns the keys not restored."""
    tenant_ids = {_id(t.id) for t in snapshot.tenants}
    key_ids = {_id(k.id) for k in snapshot.api_keys}
    provider_ids = {_id(p.id) for p in snapshot.providers}
    model_ids = {_id(m.id) for m in snapshot.models}

    # 1. Remove what did not exist then; models first (deployments restrict providers).
    for model in await repo.list_models(session):
        if model.id not in model_ids:
            await session.delete(model)
        else:
            model.deployments = []
    for key in await repo.list_api_keys(session):
        if key.id not in key_ids:
            await session.delete(key)
    for tenant in await repo.list_tenants(session):
        if tenant.id not in tenant_ids:
            await session.delete(tenant)  # its keys and policies go with it (ON DELETE CASCADE)
    await session.flush()
    for provider in await repo.list_providers(session):
        if provider.id not in provider_ids:
            await session.delete(provider)
    await session.flush()
    session.expire_all()

    # 2. Tenants, providers, models: update in place or re-create with their old ids.
    tenants = {t.id: t for t in await repo.list_tenants(session)}
    providers = {p.id: p for p in await repo.list_providers(session)}
    models = {m.id: m for m in await repo.list_models(session)}
    await _renamed_apart(
        session,
        {
            **{
                _id(t.id): (tenants[_id(t.id)], "name", t.name)
                for t in snapshot.tenants
                if _id(t.id) in tenants
            },
            **{
                _id(p.id): (providers[_id(p.id)], "name", p.name)
                for p in snapshot.providers
                if _id(p.id) in providers
            },
            **{
                _id(m.id): (models[_id(m.id)], "alias", m.alias)
                for m in snapshot.models
                if _id(m.id) in models
            },
        },
    )
    for t in snapshot.tenants:
        trow = tenants.get(_id(t.id)) or Tenant(id=_id(t.id))
        trow.name, trow.tier, trow.active, trow.labels = t.name, t.tier, t.active, dict(t.labels)
        session.add(trow)
    for p in snapshot.providers:
        prow = providers.get(_id(p.id)) or Provider(id=_id(p.id))
        prow.name, prow.type, prow.base_url = p.name, p.type, p.base_url
        prow.credential_env, prow.credential_file = p.credential.env, p.credential.file
        prow.settings, prow.timeout_ms, prow.location = dict(p.settings), p.timeout_ms, int(p.location)
        prow.site, prow.region, prow.jurisdiction = p.site, p.region, p.jurisdiction
        session.add(prow)
    await session.flush()
    for m in snapshot.models:
        mrow = models.get(_id(m.id)) or Model(id=_id(m.id))
        mrow.alias = m.alias
        mrow.capabilities = [int(c) for c in m.capabilities]
        mrow.context_window, mrow.max_output_tokens = m.context_window, m.max_output_tokens
        mrow.input_price_nanos_per_mtok = m.input_price_nanos_per_mtok
        mrow.output_price_nanos_per_mtok = m.output_price_nanos_per_mtok
        mrow.cached_input_price_nanos_per_mtok = m.cached_input_price_nanos_per_mtok
        mrow.certified_for = [int(c) for c in m.certified_for]
        mrow.certifications = list(m.certifications)
        mrow.typical_latency_ms, mrow.attributes = m.typical_latency_ms, dict(m.attributes)
        mrow.deployments = [
            Deployment(
                id=_id(d.id),
                provider_id=_id(d.provider_id),
                upstream_model=d.upstream_model,
                weight=d.weight,
                position=i,
            )
            for i, d in enumerate(m.deployments)
        ]
        session.add(mrow)

    # 3. Keys: surviving ones get their old name, scopes and expiry; deleted ones stay deleted.
    keys = {k.id: k for k in await repo.list_api_keys(session)}
    not_restored: list[str] = []
    for k in snapshot.api_keys:
        krow: ApiKey | None = keys.get(_id(k.id))
        if krow is None:
            not_restored.append(k.id)
            continue
        krow.name, krow.scopes = k.name, list(k.scopes)
        krow.expires_at = k.expires_at.ToDatetime(tzinfo=UTC) if k.HasField("expires_at") else None

    # 4. Policies: a new version wherever the current document differs.
    wanted = {(_id(p.tenant_id) if p.tenant_id else None): p for p in snapshot.policies}
    current = {p.tenant_id: p for p in await repo.current_policies(session)}
    for tenant_id in current.keys() - wanted.keys():
        latest = await repo.latest_policy(session, tenant_id)
        assert latest is not None
        session.add(
            Policy(
                tenant_id=tenant_id,
                version=latest.version + 1,
                document_json="{}",
                deleted=True,
                created_by=actor,
            )
        )
    for tenant_id, pol in wanted.items():
        latest = await repo.latest_policy(session, tenant_id)
        if latest is not None and not latest.deleted and latest.document_json == pol.document_json:
            continue
        session.add(
            Policy(
                # With no history left (the tenant was re-created), the old row comes back as it was.
                id=_id(pol.id) if latest is None else uuid.uuid4(),
                tenant_id=tenant_id,
                version=pol.version if latest is None else latest.version + 1,
                document_json=pol.document_json,
                deleted=False,
                created_by=actor,
            )
        )
    return tuple(not_restored)


@dataclass(slots=True)
class RollbackService:
    uow: UnitOfWork

    async def rollback(self, caller: Caller, version: int) -> RollbackResult:
        """Publish a new version whose config is that of stored ``version``."""
        async with self.uow.change(caller, f"rollback to v{version}") as change:
            row = await snapshot_repo.get(change.session, version)
            if row is None:
                raise NotFound("snapshot", str(version))
            not_restored = await restore(change.session, decode(row.payload, version), caller.actor)
        return RollbackResult(change.version, version, not_restored)
