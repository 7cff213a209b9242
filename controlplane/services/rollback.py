"""Rollback: write a stored snapshot's config back into the config tables, then publish.

The config tables are the system of record, so a rollback restores *them* (one unit of
work, under the config lock) and the normal publish path compiles, checks, signs and
announces the result as a new, higher version. After it, ``tenant list`` and friends
show exactly what nodes run.

Per node group: rolling back group G restores what G sees (its tenants with their keys
and policies, its providers, its models and their deployments on its providers) and
leaves everything G does not see as it is. G gets a new version; another group gets one
only when it shares an object that changed back. For a group that sees everything (the
``default`` group as created) that is the whole config, as before groups.

Three deliberate differences from a byte-for-byte copy:

- API keys deleted since that version stay deleted. A deletion is a revocation (often
  of a leaked key); undoing a config mistake must not silently re-arm a credential. The
  rollback reports the keys it did not restore; everything else about surviving keys
  (name, scopes, expiry) is restored, and keys created since are removed.
- Caller identities (JWT issuers, mTLS mappings) are not versioned: a rollback leaves them
  as they are now. Each change to them is a trust decision of its own: a removed issuer or
  mapping is a revocation, and a JWKS rotated since may have dropped a compromised signing
  key, so restoring an old identity could re-arm what was revoked; and removing one added
  since would lock its callers out as a side effect of undoing, say, a routing mistake. An
  identity change is undone explicitly (add or remove it). Diff and GetSnapshot show each
  version's identities, so the new version's diff against the target names them.
- Governance profiles are not restored either: a rollback leaves every tenant's (and the
  platform default's) current profile in force. A profile is a control, and an older one is
  often a weaker one: undoing, say, a routing mistake must not quietly re-arm a profile that
  let card numbers or credentials through, any more than it may re-arm a revoked key. A
  profile change is undone explicitly, by applying the old version (``governance get
  --version N``, then ``governance apply``). Diff and GetSnapshot show each version's
  profiles, so the new version's diff against the target names what was not restored.
- Policies are append-only history: a tenant whose current document differs gets a new
  policy version carrying the old document (or a deletion marker), never a reused number.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import ApiKey, Deployment, Model, Policy, Provider, Tenant
from controlplane.errors import NotFound
from controlplane.limits import DEFAULT_GROUP
from controlplane.repositories import config as repo
from controlplane.repositories import groups as group_repo
from controlplane.repositories import snapshots as snapshot_repo
from controlplane.services.base import Caller, UnitOfWork
from controlplane.services.limits import limits_json
from controlplane.services.tenants import evidence_content_name, spool_full_name
from controlplane.snapshots.history import decode
from controlplane.snapshots.publish import full_snapshot, group_view
from controlplane.snapshots.scope import scope_snapshot
from signalbox.api.config.v1 import snapshot_pb2

M = TypeVar("M")


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
        trow.evidence_content = evidence_content_name(t.evidence.content)
        trow.evidence_spool_full = spool_full_name(t.evidence.spool_full)
        trow.limits = limits_json(t.limits) if t.HasField("limits") else None
        session.add(trow)
    for p in snapshot.providers:
        prow = providers.get(_id(p.id)) or Provider(id=_id(p.id))
        prow.name, prow.type, prow.base_url = p.name, p.type, p.base_url
        prow.credential_env, prow.credential_file = p.credential.env, p.credential.file
        has_sealed = p.credential.HasField("sealed")
        prow.credential_sealed = (
            p.credential.sealed.SerializeToString(deterministic=True) if has_sealed else None
        )
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
        krow.limits = limits_json(k.limits) if k.HasField("limits") else None

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


def _replace(current: Sequence[M], view_ids: set[str], old: Sequence[M], key: Callable[[M], str]) -> list[M]:
    replaced = view_ids | {key(o) for o in old}
    return [c for c in current if key(c) not in replaced] + list(old)


def merge(
    full: snapshot_pb2.Snapshot, view: snapshot_pb2.Snapshot, old: snapshot_pb2.Snapshot
) -> snapshot_pb2.Snapshot:
    """The whole config with a group's part rolled back: what the group sees now (``view``,
    cut from ``full``) replaced by what it saw then (``old``), everything else as it is.

    A model's deployments on providers the group does not see (so ``old`` never carried
    them) are kept. For a group that sees everything this is ``old`` itself.
    """
    old_provider_ids = {p.id for p in old.providers}
    hidden = {p.id for p in full.providers} - {p.id for p in view.providers} - old_provider_ids
    full_models = {m.id: m for m in full.models}
    old_models = []
    for m in old.models:
        model = snapshot_pb2.Model()
        model.CopyFrom(m)
        if m.id in full_models:
            model.deployments.extend(d for d in full_models[m.id].deployments if d.provider_id in hidden)
        old_models.append(model)
    return snapshot_pb2.Snapshot(
        tenants=_replace(full.tenants, {t.id for t in view.tenants}, old.tenants, lambda t: t.id),
        api_keys=_replace(full.api_keys, {k.id for k in view.api_keys}, old.api_keys, lambda k: k.id),
        providers=_replace(full.providers, {p.id for p in view.providers}, old.providers, lambda p: p.id),
        models=_replace(full.models, {m.id for m in view.models}, old_models, lambda m: m.id),
        policies=_replace(
            full.policies, {p.tenant_id for p in view.policies}, old.policies, lambda p: p.tenant_id
        ),
    )


@dataclass(slots=True)
class RollbackService:
    uow: UnitOfWork

    async def rollback(self, caller: Caller, version: int, group: str = DEFAULT_GROUP) -> RollbackResult:
        """Publish a new version of ``group`` whose config is that of its stored ``version``.

        Only what the group sees is rolled back (see ``merge``); other groups get a new
        version only where they share an object that changed back (a tenant, a model...).
        """
        label = f"v{version}" if group == DEFAULT_GROUP else f"{group} v{version}"
        async with self.uow.change(caller, f"rollback to {label}") as change:
            # A rollback always leaves a version of its own in the group's history, even
            # when the config already says the same again.
            change.force = frozenset({group})
            session = change.session
            group_row = await group_repo.get(session, group)
            if group_row is None:
                raise NotFound("node group", group, field="group")
            row = await snapshot_repo.get(session, version, group)
            if row is None:
                raise NotFound("snapshot", str(version) if group == DEFAULT_GROUP else f"{group}/{version}")
            full = await full_snapshot(session, now=datetime.now(UTC), ttl=timedelta(0))
            view = scope_snapshot(full, group_view(group_row))
            wanted = merge(full, view, decode(row.payload, version))
            not_restored = await restore(session, wanted, caller.actor)
        return RollbackResult(change.group_version(group), version, not_restored)
