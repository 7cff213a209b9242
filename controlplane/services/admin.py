"""Admin identities (tokens, hash only; client-certificate URI SANs), the audit trail, and
what the authorization table (``controlplane.api.authz``) needs from the database: whose
tenant an object is, and the digest of an object's canonical form."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import LargeBinary
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.db.models import AdminMtlsIdentity, AdminToken, AuditEntry, Policy, TenantIdentity
from controlplane.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from controlplane.limits import NAME_CHARS
from controlplane.repositories import admin as repo
from controlplane.repositories import config as config_repo
from controlplane.repositories import governance as governance_repo
from controlplane.repositories import groups as groups_repo
from controlplane.repositories.admin import AuditFilter, AuditRow
from controlplane.services.base import Caller, check_name

ADMIN_TOKEN_PREFIX = "sbxadm_"
PLATFORM_ADMIN = "platform_admin"
TENANT_ADMIN = "tenant_admin"
AUDITOR = "auditor"
ROLES = (PLATFORM_ADMIN, TENANT_ADMIN, AUDITOR)
# The roles before tenant scoping (migration 0017 renamed stored rows the same way).
LEGACY_ROLES = {"admin": PLATFORM_ADMIN, "viewer": AUDITOR}
# Roles a tenant admin may hand out, within its own tenant.
TENANT_GRANTABLE = frozenset({TENANT_ADMIN, AUDITOR})
URI_CHARS = 2048
MAX_AUDIT_ROWS = 1000


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def check_role(role: str) -> str:
    role = LEGACY_ROLES.get(role, role)
    if role not in ROLES:
        raise InvalidArgument("role", f"must be one of {', '.join(ROLES)}")
    return role


def _check_identity_name(name: str) -> None:
    check_name("name", name)
    if len(Caller("", name).actor) > NAME_CHARS:
        # The actor ("admin:<name>") is written into audit rows and policy versions.
        raise InvalidArgument("name", f"at most {NAME_CHARS - len(Caller('', '').actor)} characters")


def canonical(row: Any) -> bytes:
    """A row's canonical form: its columns as sorted JSON, binary columns (hashes, sealed
    keys, encoded specs) left out so no secret or digest of one is ever hashed into the trail."""
    mapper = sa_inspect(type(row))
    values = {c.key: getattr(row, c.key) for c in mapper.columns if not isinstance(c.type, LargeBinary)}
    return json.dumps(values, sort_keys=True, default=str, separators=(",", ":")).encode()


Loader = Callable[[AsyncSession, str], Awaitable[Any]]


async def _policy(session: AsyncSession, tenant: str) -> Any:
    if not tenant:
        return await config_repo.latest_policy(session, None)
    row = await config_repo.get_tenant(session, tenant)
    return None if row is None else await config_repo.latest_policy(session, row.id)


async def _governance_profile(session: AsyncSession, tenant: str) -> Any:
    if not tenant:
        return await governance_repo.latest(session, None)
    row = await config_repo.get_tenant(session, tenant)
    return None if row is None else await governance_repo.latest(session, row.id)


async def _identity(session: AsyncSession, ref: str) -> TenantIdentity | None:
    ident = repo.as_uuid(ref)
    return None if ident is None else await session.get(TenantIdentity, ident)


async def _group(session: AsyncSession, name: str) -> Any:
    return await groups_repo.get(session, name)


# The objects an admin call may change, by kind: how to load one by the reference a request gives.
SUBJECTS: dict[str, Loader] = {
    "tenant": config_repo.get_tenant,
    "api_key": config_repo.get_api_key,
    "provider": config_repo.get_provider,
    "model": config_repo.get_model,
    "policy": _policy,
    "governance_profile": _governance_profile,
    "identity": _identity,
    "admin_token": repo.token,
    "admin_mtls": repo.mtls_identity,
    "node_group": _group,
}


@dataclass(frozen=True, slots=True)
class VisibleCatalog:
    """What of the shared catalog a tenant may see: the models its policy may use (its own
    policy, else the platform default's) and the providers serving them."""

    models: frozenset[str]
    """Model aliases."""
    providers: frozenset[str]
    """Provider ids."""


def _policy_models(policy: Policy | None) -> frozenset[str]:
    if policy is None or policy.deleted:
        return frozenset()
    document = json.loads(policy.document_json)
    # Stored documents compiled; the rule is the compiler's (dataplane.policy.compiler).
    if "allowed_models" in document:
        return frozenset(document["allowed_models"])
    default = document.get("default_model")
    return frozenset((default,)) if isinstance(default, str) else frozenset()


@dataclass(slots=True)
class AdminService:
    sessions: async_sessionmaker[AsyncSession]

    # ---- tokens ----

    async def create_token(
        self, name: str, role: str = PLATFORM_ADMIN, tenant: str = "", *, creator: Caller | None = None
    ) -> tuple[AdminToken, str]:
        """A new admin token; returns (row, token). Only the token's SHA-256 is stored.
        ``creator``: the caller making it (None: the bootstrap command), whose own scope
        bounds what it may create."""
        _check_identity_name(name)
        role = check_role(role)
        _check_grant(creator, role, tenant)
        token = ADMIN_TOKEN_PREFIX + secrets.token_urlsafe(32)
        async with self._write(tenant=tenant) as session:
            tenant_id = await _tenant_for_role(session, role, tenant)
            row = AdminToken(
                name=name,
                prefix=token[:12],
                token_sha256=token_digest(token),
                role=role,
                tenant_id=tenant_id,
                created_by=creator.actor if creator is not None else "",
            )
            session.add(row)
            await session.flush()
            await session.refresh(row)
        return row, token

    @asynccontextmanager
    async def _write(self, *, tenant: str, uri: str = "") -> AsyncIterator[AsyncSession]:
        """A transaction that adds an admin identity. Its checks (the tenant exists, the URI
        is not mapped yet) run before its insert, outside the config lock: a concurrent call
        can delete the tenant or map the URI in between, and the database's constraint
        decides. That loser gets the status its check would have given it, not INTERNAL."""
        try:
            async with self.sessions() as session, session.begin():
                yield session
        except IntegrityError as exc:
            constraint = getattr(getattr(exc.orig, "diag", None), "constraint_name", None) or ""
            if constraint.endswith("_tenant_id_tenants"):
                raise NotFound("tenant", tenant, field="tenant") from None
            if constraint == "uq_admin_mtls_identities_uri":
                raise AlreadyExists("admin mtls identity", uri) from None
            raise

    async def list_tokens(self, tenant: str = "") -> Sequence[AdminToken]:
        async with self.sessions() as session:
            tenant_id = None
            if tenant:
                row = await config_repo.get_tenant(session, tenant)
                if row is None:
                    raise NotFound("tenant", tenant, field="tenant")
                tenant_id = row.id
            return await repo.tokens(session, tenant_id)

    async def revoke_token(self, ref: str) -> AdminToken:
        async with self.sessions() as session, session.begin():
            row = await repo.token(session, ref)
            if row is None:
                raise NotFound("admin token", ref, field="id")
            if row.revoked_at is None:
                row.revoked_at = datetime.now(UTC)
        return row

    async def authenticate(self, token: str) -> Caller:
        if not token:
            raise Unauthenticated("missing admin token: send 'authorization: Bearer <token>'")
        digest = token_digest(token)
        async with self.sessions() as session:
            row = await repo.token_by_hash(session, digest)
            # The lookup is by digest; the constant-time compare guards the equality itself.
            if row is None or not hmac.compare_digest(bytes(row.token_sha256), digest):
                raise Unauthenticated("invalid admin token")
            return await _caller(session, str(row.id), row.name, row.role, row.tenant_id)

    # ---- identities by client certificate ----

    async def add_mtls_identity(self, *, uri: str, name: str, role: str, tenant: str) -> AdminMtlsIdentity:
        _check_uri(uri)
        _check_identity_name(name)
        role = check_role(role)
        async with self._write(tenant=tenant, uri=uri) as session:
            if await repo.mtls_identity_by_uri(session, uri) is not None:
                raise AlreadyExists("admin mtls identity", uri)
            row = AdminMtlsIdentity(
                uri=uri, name=name, role=role, tenant_id=await _tenant_for_role(session, role, tenant)
            )
            session.add(row)
            await session.flush()
            await session.refresh(row)
        return row

    async def list_mtls_identities(self) -> Sequence[AdminMtlsIdentity]:
        async with self.sessions() as session:
            return await repo.mtls_identities(session)

    async def remove_mtls_identity(self, ref: str) -> AdminMtlsIdentity:
        async with self.sessions() as session, session.begin():
            row = await repo.mtls_identity(session, ref)
            if row is None:
                raise NotFound("admin mtls identity", ref, field="id")
            await session.delete(row)
        return row

    async def authenticate_certificate(self, uris: Sequence[str]) -> Caller:
        """The admin identity of a verified client certificate with these URI SANs."""
        async with self.sessions() as session:
            for uri in uris:
                row = await repo.mtls_identity_by_uri(session, uri)
                if row is not None:
                    return await _caller(session, f"mtls:{row.id}", row.name, row.role, row.tenant_id)
        raise Unauthenticated("the client certificate is not mapped to an admin identity")

    # ---- the audit trail ----

    async def audit(self, *, actor: str, method: str, target: str, result: str, detail: str = "") -> None:
        await self.record(AuditRow(actor=actor, method=method, target=target, result=result, detail=detail))

    async def record(self, row: AuditRow) -> None:
        async with self.sessions() as session, session.begin():
            repo.add_audit(session, row)

    async def audit_rows(self, f: AuditFilter) -> tuple[Sequence[AuditEntry], bool]:
        if f.limit > MAX_AUDIT_ROWS:
            raise InvalidArgument("limit", f"at most {MAX_AUDIT_ROWS}")
        async with self.sessions() as session:
            if f.tenant and repo.as_uuid(f.tenant) is None:
                row = await config_repo.get_tenant(session, f.tenant)
                f = replace(f, tenant=str(row.id) if row is not None else f.tenant)
            return await repo.audit_rows(session, replace(f, limit=f.limit or 100))

    # ---- for the authorization table ----

    async def tenant_id(self, ref: str) -> str:
        """The id of the tenant named by id or name; "" when there is none."""
        async with self.sessions() as session:
            row = await config_repo.get_tenant(session, ref)
        return str(row.id) if row is not None else ""

    async def owner(self, kind: str, ref: str) -> str | None:
        """The tenant id an object belongs to; "" for a platform-wide one, None when there is
        no such object."""
        async with self.sessions() as session:
            row = await SUBJECTS[kind](session, ref)
        if row is None:
            return None
        tenant_id = getattr(row, "tenant_id", None)
        return str(tenant_id) if tenant_id is not None else ""

    async def catalog_of(self, tenant_id: str) -> VisibleCatalog:
        async with self.sessions() as session:
            policy = await config_repo.latest_policy(session, repo.as_uuid(tenant_id))
            if policy is None or policy.deleted:
                policy = await config_repo.latest_policy(session, None)
            aliases = _policy_models(policy)
            models = [m for m in await config_repo.list_models(session) if m.alias in aliases]
        providers = frozenset(str(d.provider_id) for m in models for d in m.deployments)
        return VisibleCatalog(frozenset(m.alias for m in models), providers)

    async def digest(self, kind: str, ref: str) -> str:
        """Hex SHA-256 of the canonical form of the object of ``kind`` named ``ref``; "" when
        there is none."""
        async with self.sessions() as session:
            row = await SUBJECTS[kind](session, ref)
        return hashlib.sha256(canonical(row)).hexdigest() if row is not None else ""


def _check_grant(creator: Caller | None, role: str, tenant: str) -> None:
    """A tenant admin hands out tenant_admin and auditor identities of its own tenant only."""
    if creator is None or creator.role == PLATFORM_ADMIN:
        return
    if creator.role != TENANT_ADMIN:
        raise PermissionDenied(f"role {creator.role!r} may not create admin tokens")
    if role not in TENANT_GRANTABLE:
        raise PermissionDenied(
            f"role: a tenant admin may create {' or '.join(sorted(TENANT_GRANTABLE))} tokens only"
        )
    if tenant not in (creator.tenant_id, creator.tenant_name):
        raise PermissionDenied("tenant: a tenant admin may create tokens of its own tenant only")


def _check_uri(uri: str) -> None:
    if not uri:
        raise InvalidArgument("uri", "must not be empty")
    if len(uri) > URI_CHARS:
        raise InvalidArgument("uri", f"at most {URI_CHARS} characters")
    scheme, sep, rest = uri.partition("://")
    if (
        not sep
        or not scheme.isascii()
        or not scheme.isalpha()
        or not rest
        or not uri.isprintable()
        or " " in uri
    ):
        raise InvalidArgument("uri", "must be an absolute URI such as spiffe://corp/admin/alice")


async def _tenant_for_role(session: AsyncSession, role: str, tenant: str) -> uuid.UUID | None:
    if role == PLATFORM_ADMIN:
        if tenant:
            raise InvalidArgument("tenant", "a platform_admin is not bound to a tenant: leave it empty")
        return None
    if not tenant:
        if role == TENANT_ADMIN:
            raise InvalidArgument("tenant", "required for a tenant_admin")
        return None
    row = await config_repo.get_tenant(session, tenant)
    if row is None:
        raise NotFound("tenant", tenant, field="tenant")
    return row.id


async def _caller(
    session: AsyncSession, ident: str, name: str, role: str, tenant_id: uuid.UUID | None
) -> Caller:
    """The identity as a caller, with whether its tenant is active (``check_active``)."""
    tenant_name, active = await repo.tenant_state(session, tenant_id)
    return Caller(
        ident,
        name,
        role,
        tenant_id=str(tenant_id) if tenant_id is not None else "",
        tenant_name=tenant_name,
        tenant_active=active,
    )


def check_active(caller: Caller) -> None:
    """A deactivated tenant's identities are refused (as its callers are on the nodes): only a
    platform identity manages, and reactivates, it. After authentication, so that the audit
    row of the refused call names the identity."""
    if not caller.tenant_active:
        raise PermissionDenied(
            f"tenant {caller.tenant_name!r} is not active: its admin identities are refused until a"
            " platform admin reactivates it"
        )
