"""Who may call which AdminService RPC, on which tenant's objects: one table, as data.

Every RPC has one ``Rule``: the permission it needs and where its target tenant is found.
The interceptor (``api/interceptor.py``) looks the rule up before the handler runs; an RPC
without a rule is refused (and ``tests/controlplane/api/test_isolation_matrix.py`` fails,
since it walks the proto's list of RPCs).

Roles (``controlplane.services.admin.ROLES``) and what they hold::

    platform_admin            every permission
    tenant_admin (tenant T)   tenant.read, tenant.write, admins.manage, catalog.read   on T only
    auditor (platform-wide)   platform.read, tenant.read, catalog.read                 on every tenant
    auditor (tenant T)        tenant.read, catalog.read                                on T only

Targets, for a caller bound to tenant T:

- ``Platform``: nothing of a tenant; the permission is a platform one, which T's roles lack.
- ``TenantField(field)``: the request names a tenant (id or name) in ``field``. It must be T
  (else NOT_FOUND, as for a tenant that does not exist: other tenants' existence does not
  leak); it is rewritten to T's id, so the handler cannot be led elsewhere. Empty: T
  (``empty=OWN``) or refused where empty means the platform default (``empty=PLATFORM``).
- ``Owned(kind, field)``: the request names an object by id; its tenant must be T, else
  NOT_FOUND worded as the handler words a missing one.
- ``Catalog``: the shared catalog (models, providers): a tenant-bound caller sees the models
  its tenant's policy may use (as a node decides: no tenant learns another's model names)
  and the providers serving them, without credential references.
- ``Tenants``: the tenant listing, cut down to T.

A ``TenantField`` answer holding evidence records keeps only the pruned ranges of the chains
those records are on (``_own_chains_only``): the fleet's chains, nodes and seqs are the
platform's (``ListEvidenceChains`` is a platform read).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from controlplane.errors import NotFound, PermissionDenied
from controlplane.services.admin import AUDITOR, PLATFORM_ADMIN, TENANT_ADMIN, AdminService, VisibleCatalog
from controlplane.services.base import Caller


class Permission(StrEnum):
    PLATFORM_WRITE = "platform.write"
    PLATFORM_READ = "platform.read"
    TENANT_WRITE = "tenant.write"
    TENANT_READ = "tenant.read"
    ADMINS_MANAGE = "admins.manage"
    CATALOG_READ = "catalog.read"


WRITES = frozenset({Permission.PLATFORM_WRITE, Permission.TENANT_WRITE, Permission.ADMINS_MANAGE})

# (role, bound to a tenant) -> permissions.
GRANTS: dict[tuple[str, bool], frozenset[Permission]] = {
    (PLATFORM_ADMIN, False): frozenset(Permission),
    (TENANT_ADMIN, True): frozenset(
        {Permission.TENANT_READ, Permission.TENANT_WRITE, Permission.ADMINS_MANAGE, Permission.CATALOG_READ}
    ),
    (AUDITOR, False): frozenset({Permission.PLATFORM_READ, Permission.TENANT_READ, Permission.CATALOG_READ}),
    (AUDITOR, True): frozenset({Permission.TENANT_READ, Permission.CATALOG_READ}),
}

TENANT_OR_PLATFORM = frozenset({"policy", "governance_profile"})
"""Subjects an empty reference names too: the platform default's."""

OWN = "own"
PLATFORM = "platform"


@dataclass(frozen=True, slots=True)
class Platform:
    pass


@dataclass(frozen=True, slots=True)
class TenantField:
    field: str
    empty: str = OWN
    """What an empty field means for a tenant-bound caller: its own tenant (``OWN``), or the
    platform default (``PLATFORM``), which it may not touch."""


@dataclass(frozen=True, slots=True)
class Owned:
    kind: str
    """A kind of ``controlplane.services.admin.SUBJECTS``."""
    label: str
    """How the handler names the kind in its NOT_FOUND message."""
    field: str = "id"


@dataclass(frozen=True, slots=True)
class Catalog:
    pass


@dataclass(frozen=True, slots=True)
class Tenants:
    pass


Target = Platform | TenantField | Owned | Catalog | Tenants


@dataclass(frozen=True, slots=True)
class Subject:
    """The object a write changes, for the audit row's before/after digests: its kind and the
    request field naming it (``a.b`` descends, ``x|y`` takes the first that is set)."""

    kind: str
    field: str


@dataclass(frozen=True, slots=True)
class Rule:
    permission: Permission
    target: Target
    subject: Subject | None = None


P, T = Permission, TenantField
_TENANT = Subject("tenant", "tenant")
_POLICY = Subject("policy", "tenant")
_IDENTITY = Subject("identity", "id")
_GOVERNANCE = Subject("governance_profile", "tenant")

RULES: dict[str, Rule] = {
    # tenants
    "CreateTenant": Rule(P.PLATFORM_WRITE, Platform()),
    "GetTenant": Rule(P.TENANT_READ, T("tenant")),
    "ListTenants": Rule(P.TENANT_READ, Tenants()),
    "UpdateTenant": Rule(P.PLATFORM_WRITE, Platform(), _TENANT),
    "DeleteTenant": Rule(P.PLATFORM_WRITE, Platform(), _TENANT),
    # API keys
    "CreateApiKey": Rule(P.TENANT_WRITE, T("tenant")),
    "ListApiKeys": Rule(P.TENANT_READ, T("tenant")),
    "DeleteApiKey": Rule(P.TENANT_WRITE, Owned("api_key", "api key"), Subject("api_key", "id")),
    # the shared catalog
    "CreateProvider": Rule(P.PLATFORM_WRITE, Platform()),
    "ListProviders": Rule(P.CATALOG_READ, Catalog()),
    "UpdateProvider": Rule(P.PLATFORM_WRITE, Platform(), Subject("provider", "provider.id|provider.name")),
    "DeleteProvider": Rule(P.PLATFORM_WRITE, Platform(), Subject("provider", "provider")),
    "CreateModel": Rule(P.PLATFORM_WRITE, Platform()),
    "ListModels": Rule(P.CATALOG_READ, Catalog()),
    "UpdateModel": Rule(P.PLATFORM_WRITE, Platform(), Subject("model", "model.id|model.alias")),
    "DeleteModel": Rule(P.PLATFORM_WRITE, Platform(), Subject("model", "model")),
    # policies (an empty tenant is the platform default)
    "ApplyPolicy": Rule(P.TENANT_WRITE, T("tenant", PLATFORM), _POLICY),
    "GetPolicy": Rule(P.TENANT_READ, T("tenant", PLATFORM)),
    "ListPolicyHistory": Rule(P.TENANT_READ, T("tenant", PLATFORM)),
    "DeletePolicy": Rule(P.TENANT_WRITE, T("tenant", PLATFORM), _POLICY),
    "ExplainRoute": Rule(P.TENANT_READ, T("tenant")),
    # nodes, snapshots, signing keys, node identity, node groups, bulk import
    "ListNodes": Rule(P.PLATFORM_READ, Platform()),
    "GetSnapshot": Rule(P.PLATFORM_READ, Platform()),
    "ExportSnapshot": Rule(P.PLATFORM_READ, Platform()),
    "ListSnapshots": Rule(P.PLATFORM_READ, Platform()),
    "DiffSnapshots": Rule(P.PLATFORM_READ, Platform()),
    "RollbackSnapshot": Rule(P.PLATFORM_WRITE, Platform()),
    "RotateSigningKey": Rule(P.PLATFORM_WRITE, Platform()),
    "ListSigningKeys": Rule(P.PLATFORM_READ, Platform()),
    "RevokeSigningKey": Rule(P.PLATFORM_WRITE, Platform()),
    "CreateEnrollToken": Rule(P.PLATFORM_WRITE, Platform()),
    "ListEnrollTokens": Rule(P.PLATFORM_READ, Platform()),
    "RevokeNode": Rule(P.PLATFORM_WRITE, Platform()),
    "CertifyNode": Rule(P.PLATFORM_WRITE, Platform()),
    "CreateNodeGroup": Rule(P.PLATFORM_WRITE, Platform()),
    "GetNodeGroup": Rule(P.PLATFORM_READ, Platform()),
    "ListNodeGroups": Rule(P.PLATFORM_READ, Platform()),
    "UpdateNodeGroup": Rule(P.PLATFORM_WRITE, Platform(), Subject("node_group", "name")),
    "DeleteNodeGroup": Rule(P.PLATFORM_WRITE, Platform(), Subject("node_group", "name")),
    "ImportConfig": Rule(P.PLATFORM_WRITE, Platform()),
    # evidence: records carry their tenant; chains, retention and import are the fleet's
    "QueryEvidence": Rule(P.TENANT_READ, T("tenant_id")),
    "GetUsage": Rule(P.TENANT_READ, T("tenant_id")),
    "ListEvidenceChains": Rule(P.PLATFORM_READ, Platform()),
    "PruneEvidence": Rule(P.PLATFORM_WRITE, Platform()),
    "ExportEvidence": Rule(P.TENANT_READ, T("tenant_id")),
    "ImportEvidence": Rule(P.PLATFORM_WRITE, Platform()),
    # caller identities
    "AddJwtIssuer": Rule(P.TENANT_WRITE, T("tenant")),
    "ListJwtIssuers": Rule(P.TENANT_READ, T("tenant")),
    "RemoveJwtIssuer": Rule(P.TENANT_WRITE, Owned("identity", "jwt issuer"), _IDENTITY),
    "AddMtlsMapping": Rule(P.TENANT_WRITE, T("tenant")),
    "ListMtlsMappings": Rule(P.TENANT_READ, T("tenant")),
    "RemoveMtlsMapping": Rule(P.TENANT_WRITE, Owned("identity", "mtls mapping"), _IDENTITY),
    # rate limits and budgets: what a tenant may spend is the platform's to set (a tenant
    # admin raising its own limits would defeat them); a tenant's own identities may read them
    "SetLimits": Rule(P.PLATFORM_WRITE, Platform(), _TENANT),
    "GetLimits": Rule(P.TENANT_READ, T("tenant")),
    "ClearLimits": Rule(P.PLATFORM_WRITE, Platform(), _TENANT),
    # admin identities and the audit trail
    "CreateAdminToken": Rule(P.ADMINS_MANAGE, T("tenant")),
    "ListAdminTokens": Rule(P.TENANT_READ, T("tenant")),
    "RevokeAdminToken": Rule(
        P.ADMINS_MANAGE, Owned("admin_token", "admin token"), Subject("admin_token", "id")
    ),
    "AddAdminMtlsIdentity": Rule(P.PLATFORM_WRITE, Platform()),
    "ListAdminMtlsIdentities": Rule(P.PLATFORM_READ, Platform()),
    "RemoveAdminMtlsIdentity": Rule(P.PLATFORM_WRITE, Platform(), Subject("admin_mtls", "id")),
    "ListAdminAudit": Rule(P.TENANT_READ, T("tenant")),
    # governance profiles: as policies (an empty tenant is the platform default, which a
    # tenant-bound identity may neither change nor read); Test only reads
    "ApplyGovernanceProfile": Rule(P.TENANT_WRITE, T("tenant", PLATFORM), _GOVERNANCE),
    "GetGovernanceProfile": Rule(P.TENANT_READ, T("tenant", PLATFORM)),
    "ListGovernanceProfileHistory": Rule(P.TENANT_READ, T("tenant", PLATFORM)),
    "DiffGovernanceProfile": Rule(P.TENANT_READ, T("tenant", PLATFORM)),
    "TestGovernanceProfile": Rule(P.TENANT_READ, T("tenant", PLATFORM)),
    "DeleteGovernanceProfile": Rule(P.TENANT_WRITE, T("tenant", PLATFORM), _GOVERNANCE),
    # ---- API-key hash key versions (key-rotation branch): changes by platform admins only;
    # the listing (no key material) also to platform-wide auditors, as signing keys ----
    "ListApiKeyHashKeys": Rule(P.PLATFORM_READ, Platform()),
    "RotateApiKeyHashKey": Rule(P.PLATFORM_WRITE, Platform()),
    "RetireApiKeyHashKey": Rule(P.PLATFORM_WRITE, Platform()),
}


def field_value(request: Any, path: str) -> str:
    """The string at ``path`` in ``request`` (see ``Subject``)."""
    for choice in path.split("|"):
        value: Any = request
        for part in choice.split("."):
            value = getattr(value, part)
        if value:
            return str(value)
    return ""


def _set_field(request: Any, path: str, value: str) -> None:
    *parents, last = path.split(".")
    for part in parents:
        request = getattr(request, part)
    setattr(request, last, value)


@dataclass(frozen=True, slots=True)
class Admission:
    """What authorization learned about an allowed call."""

    tenant: str
    """The tenant id the call is about ("" when none), for the audit row."""
    scrub: Callable[[Any], None] | None = None
    """Removes from the response what the caller may not see."""


class Authorizer:
    """Applies ``RULES`` to a call; raises ``PermissionDenied`` or ``NotFound``."""

    def __init__(self, admin: AdminService, rules: dict[str, Rule] = RULES) -> None:
        self._admin = admin
        self._rules = rules

    def rule(self, method: str) -> Rule | None:
        return self._rules.get(method)

    async def admit(self, caller: Caller, method: str, request: Any | None) -> Admission:
        """``request`` None: a client-streaming call, whose messages are data (its rule is a
        platform one)."""
        rule = self._rules.get(method)
        if rule is None:
            raise PermissionDenied(f"{method} has no authorization rule")
        granted = GRANTS.get((caller.role, bool(caller.tenant_id)), frozenset())
        if rule.permission not in granted:
            raise PermissionDenied(f"role {caller.role!r} may not call {method}")
        target = rule.target
        bound = bool(caller.tenant_id)
        if request is None and bound and not isinstance(target, Platform):
            # Nothing to find the tenant in before the handler reads the stream: refused
            # rather than let through unchecked.
            raise PermissionDenied(f"{method} takes a stream: only platform identities may call it")
        if isinstance(target, TenantField) and request is not None:
            tenant = await self._tenant_field(caller, target, request)
            return Admission(tenant, _own_chains_only if bound else None)
        if isinstance(target, Owned) and request is not None:
            ref = field_value(request, target.field)
            owner = await self._admin.owner(target.kind, ref) if ref else None
            if bound and owner != caller.tenant_id:
                raise NotFound(target.label, ref)
            return Admission(owner or "")
        if isinstance(target, Catalog) and bound:
            visible = await self._admin.catalog_of(caller.tenant_id)
            return Admission(caller.tenant_id, lambda response: _visible_only(response, visible))
        if isinstance(target, Tenants) and bound:
            return Admission(caller.tenant_id, lambda response: _only_tenant(response, caller.tenant_id))
        return Admission(caller.tenant_id or await self._tenant_of_subject(rule, request))

    async def _tenant_of_subject(self, rule: Rule, request: Any | None) -> str:
        """For the audit row: the tenant the object a platform call changes belongs to."""
        if rule.subject is None or request is None:
            return ""
        ref = field_value(request, rule.subject.field)
        if not ref:
            return ""
        if rule.subject.kind == "tenant":
            return await self._admin.tenant_id(ref)
        return await self._admin.owner(rule.subject.kind, ref) or ""

    async def _tenant_field(self, caller: Caller, target: TenantField, request: Any) -> str:
        value = field_value(request, target.field)
        if not caller.tenant_id:
            return await self._admin.tenant_id(value) if value else ""
        if not value and target.empty == PLATFORM:
            raise PermissionDenied(f"{target.field}: a tenant-bound identity must name its own tenant")
        if value and value not in (caller.tenant_id, caller.tenant_name):
            # Worded as for a tenant that does not exist: B's existence does not leak to A.
            raise NotFound("tenant", value, field=target.field)
        _set_field(request, target.field, caller.tenant_id)
        return caller.tenant_id

    async def digest(self, rule: Rule, request: Any) -> str:
        """Digest of the rule's subject as it is now ("" when the rule has none, or it is absent)."""
        if rule.subject is None or rule.permission not in WRITES:
            return ""
        ref = field_value(request, rule.subject.field)
        if not ref and rule.subject.kind not in TENANT_OR_PLATFORM:
            return ""
        return await self._admin.digest(rule.subject.kind, ref)


def _visible_only(response: Any, visible: VisibleCatalog) -> None:
    """The models the tenant's policy may use and the providers serving them, without
    credential references."""
    if hasattr(response, "models"):
        keep = [m for m in response.models if m.alias in visible.models]
        del response.models[:]
        response.models.extend(keep)
    if hasattr(response, "providers"):
        kept = [p for p in response.providers if p.id in visible.providers]
        del response.providers[:]
        response.providers.extend(kept)
        for provider in response.providers:
            provider.ClearField("credential")


def _own_chains_only(response: Any) -> None:
    """An evidence answer's pruned ranges of the chains its records are on: another chain's
    would tell a tenant-bound caller of nodes it does not use and, by their seqs, how many
    requests they served."""
    if not hasattr(response, "pruned") or not hasattr(response, "records"):
        return
    chains = {r.chain_id for r in response.records}
    keep = [p for p in response.pruned if p.chain_id in chains]
    del response.pruned[:]
    response.pruned.extend(keep)


def _only_tenant(response: Any, tenant_id: str) -> None:
    keep = [t for t in response.tenants if t.id == tenant_id]
    del response.tenants[:]
    response.tenants.extend(keep)
