"""Config entities: tenants, API keys, providers, models, policies."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import ApiKey, Deployment, Model, Policy, Provider, Tenant

# One lock serializes every config change across replicas, so snapshot versions
# are allocated and committed in the same order and each snapshot sees a
# consistent, complete state.
CONFIG_LOCK = 0x5B0C_0002


async def lock_config(session: AsyncSession) -> None:
    """Take the transaction-scoped config write lock."""
    await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": CONFIG_LOCK})


def _as_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


async def get_tenant(session: AsyncSession, ref: str) -> Tenant | None:
    """A tenant by id or by name."""
    ident = _as_uuid(ref)
    if ident is not None:
        row = await session.get(Tenant, ident)
        if row is not None:
            return row
    return await session.scalar(select(Tenant).where(Tenant.name == ref))


async def list_tenants(session: AsyncSession) -> Sequence[Tenant]:
    return (await session.scalars(select(Tenant).order_by(Tenant.name))).all()


async def get_api_key(session: AsyncSession, ref: str) -> ApiKey | None:
    ident = _as_uuid(ref)
    return None if ident is None else await session.get(ApiKey, ident)


async def list_api_keys(session: AsyncSession, tenant_id: uuid.UUID | None = None) -> Sequence[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if tenant_id is not None:
        query = query.where(ApiKey.tenant_id == tenant_id)
    return (await session.scalars(query)).all()


async def get_provider(session: AsyncSession, ref: str) -> Provider | None:
    """A provider by id or by name."""
    ident = _as_uuid(ref)
    if ident is not None:
        row = await session.get(Provider, ident)
        if row is not None:
            return row
    return await session.scalar(select(Provider).where(Provider.name == ref))


async def list_providers(session: AsyncSession) -> Sequence[Provider]:
    return (await session.scalars(select(Provider).order_by(Provider.name))).all()


async def models_using_provider(session: AsyncSession, provider_id: uuid.UUID) -> Sequence[str]:
    """Aliases of the models with a deployment on the provider."""
    query = (
        select(Model.alias)
        .join(Deployment, Deployment.model_id == Model.id)
        .where(Deployment.provider_id == provider_id)
        .distinct()
        .order_by(Model.alias)
    )
    return (await session.scalars(query)).all()


async def get_model(session: AsyncSession, ref: str) -> Model | None:
    """A model by id or by alias."""
    ident = _as_uuid(ref)
    if ident is not None:
        row = await session.get(Model, ident)
        if row is not None:
            return row
    return await session.scalar(select(Model).where(Model.alias == ref))


async def list_models(session: AsyncSession) -> Sequence[Model]:
    return (await session.scalars(select(Model).order_by(Model.alias))).all()


async def policy_history(session: AsyncSession, tenant_id: uuid.UUID | None) -> Sequence[Policy]:
    """Every version of one tenant's policy (None: the platform default), oldest first."""
    cond = Policy.tenant_id.is_(None) if tenant_id is None else Policy.tenant_id == tenant_id
    return (await session.scalars(select(Policy).where(cond).order_by(Policy.version))).all()


async def latest_policy(session: AsyncSession, tenant_id: uuid.UUID | None) -> Policy | None:
    """The newest version (possibly a deletion marker) of one tenant's policy."""
    cond = Policy.tenant_id.is_(None) if tenant_id is None else Policy.tenant_id == tenant_id
    return await session.scalar(select(Policy).where(cond).order_by(Policy.version.desc()).limit(1))


async def current_policies(session: AsyncSession) -> Sequence[Policy]:
    """The newest non-deleted version per tenant, the platform default first."""
    newest = (
        select(Policy.tenant_id, func.max(Policy.version).label("version"))
        .group_by(Policy.tenant_id)
        .subquery()
    )
    query = (
        select(Policy)
        .join(
            newest,
            (Policy.version == newest.c.version)
            & (Policy.tenant_id.is_not_distinct_from(newest.c.tenant_id)),
        )
        .where(Policy.deleted.is_(False))
        .order_by(Policy.tenant_id.nulls_first())
    )
    return (await session.scalars(query)).all()
