"""Admin tokens (hash only) and the audit log."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.db.models import AdminToken
from controlplane.errors import InvalidArgument, PermissionDenied, Unauthenticated
from controlplane.limits import NAME_CHARS
from controlplane.repositories import admin as repo
from controlplane.services.base import Caller, check_name

ADMIN_TOKEN_PREFIX = "sbxadm_"
ROLES = ("admin", "viewer")
# What a viewer may call: reads only. Anything else needs the admin role.
READ_ONLY_METHODS = frozenset(
    {
        "GetTenant",
        "GetLimits",
        "ListTenants",
        "ListApiKeys",
        "ListProviders",
        "ListModels",
        "GetPolicy",
        "ListPolicyHistory",
        "ExplainRoute",
        "ListNodes",
        "GetSnapshot",
        "ExportSnapshot",
        "ListSnapshots",
        "DiffSnapshots",
        "ListSigningKeys",
        "ListEnrollTokens",
        "GetNodeGroup",
        "ListNodeGroups",
        "QueryEvidence",
        "ListEvidenceChains",
        "ExportEvidence",
        "ListJwtIssuers",
        "ListMtlsMappings",
    }
)


def authorize(caller: Caller, method: str) -> None:
    """Raise ``PermissionDenied`` unless the caller's role allows ``method``."""
    if caller.role == "admin" or (caller.role == "viewer" and method in READ_ONLY_METHODS):
        return
    raise PermissionDenied(f"role {caller.role!r} may not call {method}")


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(slots=True)
class AdminService:
    sessions: async_sessionmaker[AsyncSession]

    async def create_token(self, name: str, role: str = "admin") -> tuple[AdminToken, str]:
        """A new admin token; returns (row, token). Only the token's SHA-256 is stored."""
        check_name("name", name)
        if len(Caller("", name).actor) > NAME_CHARS:
            # The actor ("admin:<name>") is written into audit rows and policy versions.
            raise InvalidArgument("name", f"at most {NAME_CHARS - len(Caller('', '').actor)} characters")
        if role not in ROLES:
            raise InvalidArgument("role", f"must be one of {', '.join(ROLES)}")
        token = ADMIN_TOKEN_PREFIX + secrets.token_urlsafe(32)
        row = AdminToken(name=name, prefix=token[:12], token_sha256=token_digest(token), role=role)
        async with self.sessions() as session, session.begin():
            session.add(row)
        return row, token

    async def authenticate(self, token: str) -> Caller:
        if not token:
            raise Unauthenticated("missing admin token: send 'authorization: Bearer <token>'")
        digest = token_digest(token)
        async with self.sessions() as session:
            row = await repo.token_by_hash(session, digest)
        # The lookup is by digest; the constant-time compare guards the equality itself.
        if row is None or not hmac.compare_digest(bytes(row.token_sha256), digest):
            raise Unauthenticated("invalid admin token")
        return Caller(str(row.id), row.name, row.role)

    async def audit(self, *, actor: str, method: str, target: str, result: str, detail: str = "") -> None:
        async with self.sessions() as session, session.begin():
            repo.add_audit(session, actor=actor, method=method, target=target, result=result, detail=detail)
