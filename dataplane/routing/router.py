"""Choose, for one request, the ordered deployments to try.

``plan_route`` is pure: no I/O, no clocks; everything comes from the
``RuntimeConfig`` and the request's features, so the admin API can dry-run it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from dataplane.config.model import (
    Capability,
    DataClass,
    DeploymentConfig,
    DeploymentMode,
    ModelConfig,
    ProviderConfig,
    RuntimeConfig,
    TenantConfig,
)
from dataplane.errors import CapabilityUnavailable, NotFound, PermissionDenied
from dataplane.routing.policy import CompiledPolicy


@dataclass(frozen=True, slots=True)
class RouteQuery:
    """What routing needs to know about a request."""

    tenant: TenantConfig
    model: str = ""
    """Explicit model alias, or empty to let the policy choose."""
    capabilities: frozenset[Capability] = frozenset()
    task: str = ""
    data_classification: DataClass = DataClass.UNSPECIFIED
    metadata: Mapping[str, str] = field(default_factory=dict)
    estimated_input_tokens: int = 0
    max_output_tokens: int | None = None
    streaming: bool = False
    embeddings: bool = False


@dataclass(frozen=True, slots=True)
class Candidate:
    model: ModelConfig
    deployment: DeploymentConfig
    provider: ProviderConfig

    @property
    def label(self) -> str:
        return f"{self.model.alias}@{self.provider.name or self.provider.id}"


@dataclass(frozen=True, slots=True)
class RoutePlan:
    policy_id: str
    policy_version: int
    rule: str
    strategy: str
    considered: tuple[str, ...]
    """Model aliases considered, in order."""
    dropped: tuple[tuple[str, str], ...]
    """(model alias, why it was dropped)."""
    ordered: tuple[Candidate, ...]
    """First is the choice, the rest are fallbacks in order."""
    reason: str
    shadow: Candidate | None = None


@dataclass(frozen=True, slots=True)
class NodeContext:
    """Where the node runs: constrains dispatch like a policy does."""

    mode: DeploymentMode = DeploymentMode.CLOUD
    site: str = ""


def policy_for(config: RuntimeConfig, tenant: TenantConfig) -> CompiledPolicy:
    policy = config.policies.get(tenant.id) or config.policies.get("")
    if policy is None:
        raise PermissionDenied(f"tenant {tenant.name or tenant.id!r} has no routing policy")
    return policy


def _missing(model: ModelConfig, query: RouteQuery) -> list[Capability]:
    return sorted(c for c in query.capabilities if c not in model.capabilities)


def plan_route(config: RuntimeConfig, query: RouteQuery, node: NodeContext = NodeContext()) -> RoutePlan:
    """The ordered candidates for ``query`` under the tenant's policy.

    Raises NotFound (unknown model), PermissionDenied (not allowed or no policy)
    or CapabilityUnavailable (no allowed model has what the request needs).
    """
    policy = policy_for(config, query.tenant)
    allowed = policy.allowed_models

    def candidates_of(model: ModelConfig) -> list[Candidate]:
        return [Candidate(model, d, config.providers[d.provider_id]) for d in model.deployments]

    if query.model:
        model = config.models.get(query.model)
        if model is None:
            raise NotFound(f"model: unknown model {query.model!r}")
        if allowed is not None and model.alias not in allowed:
            raise PermissionDenied(f"model: tenant may not use {model.alias!r}")
        missing = _missing(model, query)
        if missing:
            raise CapabilityUnavailable(
                missing[0].value, f"model {model.alias!r} lacks capability {missing[0].value!r}"
            )
        return RoutePlan(
            policy.policy_id,
            policy.version,
            "explicit",
            "explicit",
            (model.alias,),
            (),
            tuple(candidates_of(model)),
            "model named by the caller",
        )

    names = sorted(allowed) if allowed is not None else sorted(config.models)
    if policy.default_model:
        names = [policy.default_model, *(n for n in names if n != policy.default_model)]
    dropped: list[tuple[str, str]] = []
    chosen: list[Candidate] = []
    for name in names:
        model = config.models[name]
        missing = _missing(model, query)
        if missing:
            dropped.append((name, f"lacks capability {missing[0].value!r}"))
            continue
        chosen.extend(candidates_of(model))
    if not chosen:
        capability = next((c for c in sorted(query.capabilities)), Capability.CHAT)
        raise CapabilityUnavailable(capability.value, f"no allowed model has capability {capability.value!r}")
    reason = "policy default" if policy.default_model == chosen[0].model.alias else "first capable model"
    return RoutePlan(
        policy.policy_id,
        policy.version,
        "default",
        "priority",
        tuple(names),
        tuple(dropped),
        tuple(chosen),
        reason,
    )
