"""Tenants' caller identities besides API keys: JWT issuers and mTLS URI SAN mappings.

Each entry is checked with the node's own compiler (``dataplane.snapshot.identities``)
before it is stored, so what is signed always compiles on a node; a change publishes a
snapshot like any other config change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from controlplane.db.models import TenantIdentity
from controlplane.errors import InvalidArgument, NotFound
from controlplane.repositories import config as repo
from controlplane.repositories import identities as identity_repo
from controlplane.services.base import Caller, UnitOfWork
from dataplane.errors import shown
from dataplane.snapshot.identities import IdentityInvalid, check_jwt_issuer, check_mtls_mapping
from signalbox.api.config.v1 import snapshot_pb2

JWT = identity_repo.JWT
MTLS = identity_repo.MTLS


def normalized_issuer(issuer: snapshot_pb2.JwtIssuer) -> snapshot_pb2.JwtIssuer:
    """The issuer as stored: defaults filled in (subject claim ``sub``)."""
    stored = snapshot_pb2.JwtIssuer()
    stored.CopyFrom(issuer)
    stored.subject_claim = stored.subject_claim or "sub"
    return stored


@dataclass(slots=True)
class CallerIdentityService:
    uow: UnitOfWork

    async def add_jwt(
        self, caller: Caller, *, tenant: str, issuer: snapshot_pb2.JwtIssuer
    ) -> tuple[TenantIdentity, int]:
        if not tenant:
            raise InvalidArgument("tenant", "must not be empty")
        stored = normalized_issuer(issuer)
        try:
            check_jwt_issuer("", "", stored, prefix="issuer.")
        except IdentityInvalid as exc:
            raise InvalidArgument(exc.field, exc.problem) from None
        return await self._add(
            caller, tenant, JWT, stored.issuer, False, stored, f"add jwt issuer for {tenant}"
        )

    async def add_mtls(
        self, caller: Caller, *, tenant: str, mapping: snapshot_pb2.MtlsMapping
    ) -> tuple[TenantIdentity, int]:
        if not tenant:
            raise InvalidArgument("tenant", "must not be empty")
        try:
            check_mtls_mapping("", "", mapping, prefix="mapping.")
        except IdentityInvalid as exc:
            raise InvalidArgument(exc.field, exc.problem) from None
        return await self._add(
            caller, tenant, MTLS, mapping.uri, mapping.prefix, mapping, f"add mtls mapping for {tenant}"
        )

    async def _add(
        self,
        caller: Caller,
        tenant: str,
        kind: str,
        match: str,
        prefix: bool,
        spec: snapshot_pb2.JwtIssuer | snapshot_pb2.MtlsMapping,
        reason: str,
    ) -> tuple[TenantIdentity, int]:
        async with self.uow.change(caller, reason) as change:
            owner = await repo.get_tenant(change.session, tenant)
            if owner is None:
                raise NotFound("tenant", tenant)
            if await identity_repo.find(change.session, kind, match, prefix) is not None:
                # An issuer (or SAN) belongs to one tenant at most: a node must never choose.
                field = "issuer.issuer" if kind == JWT else "mapping.uri"
                what = "issuer" if kind == JWT else ("prefix mapping" if prefix else "mapping")
                raise InvalidArgument(field, f"duplicate {what}: {shown(match)} is already configured")
            row = TenantIdentity(
                tenant_id=owner.id,
                kind=kind,
                match=match,
                prefix=prefix,
                spec=spec.SerializeToString(deterministic=True),
                created_at=datetime.now(UTC),
            )
            change.session.add(row)
            await change.session.flush()
        return row, change.version

    async def list(self, kind: str, tenant: str = "") -> Sequence[TenantIdentity]:
        async with self.uow.read() as session:
            tenant_id = None
            if tenant:
                row = await repo.get_tenant(session, tenant)
                if row is None:
                    raise NotFound("tenant", tenant)
                tenant_id = row.id
            return await identity_repo.list_for(session, kind, tenant_id)

    async def remove(self, caller: Caller, kind: str, ref: str) -> int:
        what = "jwt issuer" if kind == JWT else "mtls mapping"
        async with self.uow.change(caller, f"remove {what} {ref}") as change:
            row = await identity_repo.get(change.session, kind, ref)
            if row is None:
                raise NotFound(what, ref)
            await change.session.delete(row)
        return change.version
