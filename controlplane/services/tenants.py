"""Tenants."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from controlplane.db.models import Tenant
from controlplane.errors import AlreadyExists, InvalidArgument, NotFound
from controlplane.limits import MAP_ENTRIES
from controlplane.repositories import config as repo
from controlplane.services.base import Caller, UnitOfWork, check_name, check_str_map
from signalbox.api.config.v1 import snapshot_pb2

# ---- evidence settings (spool branch) ----
EVIDENCE_CONTENT: dict[int, str] = {
    snapshot_pb2.EVIDENCE_CONTENT_DIGEST: "digest",
    snapshot_pb2.EVIDENCE_CONTENT_FULL: "full",
}
"""A tenant's ``evidence_content``: its records carry digests only, or the content too."""
SPOOL_FULL: dict[int, str] = {
    snapshot_pb2.SPOOL_FULL_SERVE_AND_ALARM: "serve_and_alarm",
    snapshot_pb2.SPOOL_FULL_REFUSE: "refuse",
}
"""A tenant's ``evidence_spool_full``: what its requests get while a node's spool is full."""


def evidence_content_name(value: int, field: str = "evidence_content") -> str:
    """The stored name of an ``EvidenceContent`` value; ``InvalidArgument`` for another."""
    return _named(EVIDENCE_CONTENT, value, field)


def spool_full_name(value: int, field: str = "evidence_spool_full") -> str:
    """The stored name of a ``SpoolFullPolicy`` value; ``InvalidArgument`` for another."""
    return _named(SPOOL_FULL, value, field)


def _named(names: dict[int, str], value: int, field: str) -> str:
    if value not in names:
        known = ", ".join(f"{v} ({n})" for v, n in names.items())
        raise InvalidArgument(field, f"{int(value)} is not one of {known}")
    return names[value]


# ---- evidence settings (end) ----


@dataclass(slots=True)
class TenantService:
    uow: UnitOfWork

    async def create(
        self,
        caller: Caller,
        *,
        name: str,
        tier: str = "",
        labels: dict[str, str] | None = None,
        evidence_content: int = snapshot_pb2.EVIDENCE_CONTENT_DIGEST,
        evidence_spool_full: int = snapshot_pb2.SPOOL_FULL_SERVE_AND_ALARM,
    ) -> tuple[Tenant, int]:
        check_name("name", name)
        labels = check_str_map("labels", labels or {})
        content, spool_full = evidence_content_name(evidence_content), spool_full_name(evidence_spool_full)
        async with self.uow.change(caller, f"create tenant {name}") as change:
            if await repo.get_tenant(change.session, name) is not None:
                raise AlreadyExists("tenant", name)
            tenant = Tenant(
                name=name,
                tier=tier,
                active=True,
                labels=labels,
                evidence_content=content,
                evidence_spool_full=spool_full,
            )
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
        evidence_content: int | None = None,
        evidence_spool_full: int | None = None,
    ) -> tuple[Tenant, int]:
        content = evidence_content_name(evidence_content) if evidence_content is not None else None
        spool_full = spool_full_name(evidence_spool_full) if evidence_spool_full is not None else None
        async with self.uow.change(caller, f"update tenant {ref}") as change:
            tenant = await repo.get_tenant(change.session, ref)
            if tenant is None:
                raise NotFound("tenant", ref)
            if tier is not None:
                tenant.tier = tier
            if active is not None:
                tenant.active = active
            if content is not None:
                tenant.evidence_content = content
            if spool_full is not None:
                tenant.evidence_spool_full = spool_full
            if labels or replace_labels:
                new = check_str_map("labels", labels or {})
                merged = new if replace_labels else {**tenant.labels, **new}
                if len(merged) > MAP_ENTRIES:
                    # One request is held to MAP_ENTRIES; merges must not add up past it.
                    raise InvalidArgument(
                        "labels",
                        f"at most {MAP_ENTRIES} entries (merged with the tenant's {len(tenant.labels)}, "
                        f"{len(merged)})",
                    )
                tenant.labels = merged
        return tenant, change.version

    async def delete(self, caller: Caller, ref: str) -> int:
        """Delete a tenant with its API keys and policy history."""
        async with self.uow.change(caller, f"delete tenant {ref}") as change:
            tenant = await repo.get_tenant(change.session, ref)
            if tenant is None:
                raise NotFound("tenant", ref)
            await change.session.delete(tenant)
        return change.version
