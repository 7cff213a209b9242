"""Tenants."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from controlplane.db.models import Tenant
from controlplane.errors import AlreadyExists, NotFound
from controlplane.repositories import config as repo
from controlplane.services.base import Caller, UnitOfWork, check_name, check_str_map


@dataclass(slots=True)
class TenantService:
    uow: UnitOfWork

    async def create(
        self, caller: Caller, *, name: str, tier: str = "", labels: dict[str, str] | None = None
    ) -> tuple[Tenant, int]:
        check_name("name", name)
        labels = check_str_map("labels", labels or {})
        async with self.uow.change(caller, f"create tenant {name}") as change:
            if await repo.get_tenant(change.session, name) is not None:
                raise AlreadyExists("tenant", name)
            tenant = Tenant(name=name, tier=tier, active=True, labels=labels)
            change.session.add(tenant)
        return tenant, change.version

    async def get(self, ref: str) -> Tenant:
        async with self.uow.read() as session:
            tenant = await repo.get_tenant(session, ref)
        if tenant is None:
            raise NotFound("tenant", ref)
        return tenant

    async def list(self) -> Sequence[Tenant]:
        async with self.uow.read() as session:
            return await repo.list_tenants(session)

    async def update(
        self,
        caller: Caller,
        ref: str,
        *,
        tier: str | None = None,
        active: bool | None = None,
        labels: dict[str, str] | None = None,
        replace_labels: bool = False,
    ) -> tuple[Tenant, int]:
        async with self.uow.change(caller, f"update tenant {ref}") as change:
            tenant = await repo.get_tenant(change.session, ref)
            if tenant is None:
                raise NotFound("tenant", ref)
            if tier is not None:
                tenant.tier = tier
            if active is not None:
                tenant.active = active
            if labels or replace_labels:
                new = check_str_map("labels", labels or {})
                tenant.labels = new if replace_labels else {**tenant.labels, **new}
        return tenant, change.version

    async def delete(self, caller: Caller, ref: str) -> int:
        """Delete a tenant with its API keys and policy history."""
        async with self.uow.change(caller, f"delete tenant {ref}") as change:
            tenant = await repo.get_tenant(change.session, ref)
            if tenant is None:
                raise NotFound("tenant", ref)
            await change.session.delete(tenant)
        return change.version
