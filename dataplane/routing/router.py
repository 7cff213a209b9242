"""Choose, for one request, the ordered deployments to try.

``plan_route`` is pure: no I/O, no clocks, no randomness; everything comes from
the ``RuntimeConfig``, the request's features, the node's context and (when
given) a read-only view of deployment health, so the admin API can dry-run it
and two nodes with the same inputs decide the same way.

A decision, in order:

1. the tenant's policy (its own, else the platform default);
2. the first rule whose ``match`` holds (none: the policy's default route);
3. each candidate model, then each of its deployments, is checked against the
   constraints; a failure drops it with the reason (kept in the plan);
4. the rule's strategy orders the surviving models; its fallbacks follow;
5. within a model, deployments are load-balanced by weight with a stable hash
   of the request id; deployments with an open breaker or an unexpired
   Retry-After go to the back (the dispatcher skips them while they last);
6. a shadow candidate is chosen for the configured share of requests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dataplane.config.model import (
    Capability,
    DataClass,
    DeploymentConfig,
    DeploymentMode,
    ModelConfig,
    ProviderConfig,
    ProviderLocation,
    RuntimeConfig,
    TenantConfig,
)
from dataplane.errors import CapabilityUnavailable, NotFound, PermissionDenied
from dataplane.routing.errors import NoEligibleCandidate
from dataplane.routing.health import BreakerState, HealthView
from dataplane.routing.policy import (
    DEFAULT_RETRY,
    CompiledPolicy,
    CompiledRule,
    Constraints,
    Match,
    PricedModel,
    RetrySettings,
    Strategy,
    stable_fraction,
)


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
    region: str = ""
    """Where the request comes from or must stay; empty: the tenant's ``region`` label."""
    jurisdiction: str = ""
    """Empty: the tenant's ``jurisdiction`` label."""
    request_id: str = ""
    """The correlation id: spreads load over deployments, and draws split arms and
    shadow shares when the sticky key is absent from the request."""


@dataclass(frozen=True, slots=True)
class Candidate:
    model: ModelConfig
    deployment: DeploymentConfig
    provider: ProviderConfig

    @property
    def label(self) -> str:
        return f"{self.model.alias}@{self.provider.name or self.provider.id}"

    @property
    def key(self) -> str:
        """Identifies the deployment to the dispatcher's breakers, across snapshots."""
        d = self.deployment
        return d.id or f"{d.provider_id}/{d.upstream_model}"


@dataclass(frozen=True, slots=True)
class RoutePlan:
    policy_id: str
    policy_version: int
    rule: str
    strategy: str
    considered: tuple[str, ...]
    """Model aliases considered, in order."""
    dropped: tuple[tuple[str, str], ...]
    """(model alias, or ``alias@provider`` for one deployment; why it was dropped)."""
    ordered: tuple[Candidate, ...]
    """First is the choice, the rest are fallbacks in order."""
    reason: str
    shadow: Candidate | None = None
    retry: RetrySettings = DEFAULT_RETRY
    """How the dispatcher retries and falls back for this request."""
    arm: str = ""
    """The weighted split's arm for this request (empty for other strategies)."""
    deferred: tuple[tuple[str, str], ...] = ()
    """(``alias@provider``, why) for deployments moved to the back: breaker open, Retry-After."""

    @property
    def chosen(self) -> Candidate:
        return self.ordered[0]

    @property
    def fallbacks(self) -> tuple[Candidate, ...]:
        return self.ordered[1:]

    def explain(self) -> dict[str, Any]:
        """The decision as plain data, for ExplainRoute and evidence records."""
        return {
            "policy_id": self.policy_id,
            "policy_version": self.policy_version,
            "rule": self.rule,
            "strategy": self.strategy,
            "reason": self.reason,
            "arm": self.arm,
            "considered": list(self.considered),
            "dropped": [{"candidate": c, "why": why} for c, why in self.dropped],
            "deferred": [{"candidate": c, "why": why} for c, why in self.deferred],
            "chosen": _describe(self.ordered[0]) if self.ordered else None,
            "fallbacks": [_describe(c) for c in self.ordered[1:]],
            "shadow": _describe(self.shadow) if self.shadow is not None else None,
            "retry": {
                "max_attempts": self.retry.max_attempts,
                "attempts_per_deployment": self.retry.attempts_per_deployment,
                "backoff_base_ms": self.retry.backoff_base_ms,
                "backoff_cap_ms": self.retry.backoff_cap_ms,
                "fallback_on": sorted(self.retry.fallback_on),
            },
        }


def _describe(c: Candidate) -> dict[str, str]:
    return {
        "model": c.model.alias,
        "deployment": c.key,
        "provider": c.provider.name or c.provider.id,
        "upstream_model": c.deployment.upstream_model,
    }


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


def plan_route(
    config: RuntimeConfig,
    query: RouteQuery,
    node: NodeContext = NodeContext(),
    health: HealthView | None = None,
) -> RoutePlan:
    """The ordered candidates for ``query`` under the tenant's policy.

    ``health`` (usually ``Dispatcher.health``) lets observed latency and open
    breakers shape the order; without it the plan uses the registry's figures.

    Raises NotFound (unknown model), PermissionDenied (not allowed or no policy),
    CapabilityUnavailable (no allowed model has what the request needs) or
    NoEligibleCandidate (every candidate was dropped by a constraint).
    """
    policy = policy_for(config, query.tenant)
    if query.model:
        return _explicit(config, policy, query, node, health)
    rule = _first_match(policy.rules, query)
    if rule is None:
        rule = policy.default_rule or _unbounded_default(config, policy)
    return _Planner(config, query, node, health, rule.constraints).plan(policy, rule)


def _explicit(
    config: RuntimeConfig,
    policy: CompiledPolicy,
    query: RouteQuery,
    node: NodeContext,
    health: HealthView | None,
) -> RoutePlan:
    model = config.models.get(query.model)
    if model is None:
        raise NotFound(f"model: unknown model {query.model!r}")
    if policy.allowed_models is not None and model.alias not in policy.allowed_models:
        raise PermissionDenied(f"model: tenant may not use {model.alias!r}")
    missing = _missing(model, query)
    if missing is not None:
        raise CapabilityUnavailable(
            missing.value, f"model {model.alias!r} lacks capability {missing.value!r}"
        )
    # The caller chose the model, not the constraints: residency, certification
    # and the node's mode still hold.
    planner = _Planner(config, query, node, health, policy.constraints)
    priced = PricedModel.of(model)
    survivors = planner.eligible((priced,))
    if not survivors:
        raise NoEligibleCandidate(
            f"model {model.alias!r} is not eligible: {planner.dropped[0][1]}", tuple(planner.dropped)
        )
    ordered = planner.spread(survivors)
    return RoutePlan(
        policy.policy_id,
        policy.version,
        "explicit",
        "explicit",
        (model.alias,),
        tuple(planner.dropped),
        ordered,
        "model named by the caller",
        retry=policy.retry,
        deferred=tuple(planner.deferred),
    )


def _unbounded_default(config: RuntimeConfig, policy: CompiledPolicy) -> CompiledRule:
    # A policy without allowed_models may use the whole registry; resolved per
    # request because precomputing it for every such tenant costs more than it saves.
    names = sorted(config.models)
    if policy.default_model:
        names = [policy.default_model, *(n for n in names if n != policy.default_model)]
    priced = [PricedModel.of(config.models[n]) for n in names]
    return CompiledRule(
        "default",
        Match(),
        Strategy.PRIORITY,
        tuple(priced),
        constraints=policy.constraints,
        retry=policy.retry,
    )


def _first_match(rules: tuple[CompiledRule, ...], q: RouteQuery) -> CompiledRule | None:
    for rule in rules:
        m = rule.match
        if m.tiers is not None and q.tenant.tier not in m.tiers:
            continue
        if m.tasks is not None and q.task not in m.tasks:
            continue
        if m.capabilities and not m.capabilities <= q.capabilities:
            continue
        if m.data_classes is not None and q.data_classification not in m.data_classes:
            continue
        if m.regions is not None and (q.region or q.tenant.labels.get("region", "")) not in m.regions:
            continue
        if (
            m.jurisdictions is not None
            and (q.jurisdiction or q.tenant.labels.get("jurisdiction", "")) not in m.jurisdictions
        ):
            continue
        if m.metadata and not all(q.metadata.get(k) in values for k, values in m.metadata):
            continue
        return rule
    return None


def _missing(model: ModelConfig, query: RouteQuery) -> Capability | None:
    if query.capabilities <= model.capabilities:
        return None
    return min(c for c in query.capabilities if c not in model.capabilities)


def sticky_value(key: str, query: RouteQuery) -> str:
    """The request's value for a sticky key; the request id when the request lacks it."""
    value: str | None = None
    if key.startswith("metadata."):
        value = query.metadata.get(key[9:])
    elif key.startswith("tenant.labels."):
        value = query.tenant.labels.get(key[14:])
    elif key == "tenant.id":
        value = query.tenant.id
    return value if value else query.request_id


_Survivor = tuple[PricedModel, list[tuple[DeploymentConfig, ProviderConfig]]]


class _Planner:
    """One decision's working state: what survived and what was dropped, and why."""

    __slots__ = ("config", "constraints", "deferred", "dropped", "health", "node", "query")

    def __init__(
        self,
        config: RuntimeConfig,
        query: RouteQuery,
        node: NodeContext,
        health: HealthView | None,
        constraints: Constraints,
    ) -> None:
        self.config = config
        self.query = query
        self.node = node
        self.health = health
        self.constraints = constraints
        self.dropped: list[tuple[str, str]] = []
        self.deferred: list[tuple[str, str]] = []

    def plan(self, policy: CompiledPolicy, rule: CompiledRule) -> RoutePlan:
        q = self.query
        survivors = self.eligible(rule.candidates)
        arm = ""
        reason = f"rule {rule.name!r}"
        strategy = rule.strategy
        if strategy is Strategy.CHEAPEST and len(survivors) > 1:
            tokens, out = q.estimated_input_tokens, q.max_output_tokens
            survivors.sort(key=lambda s: s[0].estimated_cost_nanos(tokens, out))
            reason += ": cheapest estimated cost"
        elif strategy is Strategy.LATENCY and len(survivors) > 1:
            survivors.sort(key=self._latency_of)
            reason += ": lowest observed latency"
        elif strategy is Strategy.WEIGHTED and survivors:
            chosen = self._arm(rule, survivors)
            arm = survivors[chosen][0].model.alias
            survivors.insert(0, survivors.pop(chosen))
            reason += f": weighted split arm {arm!r}"
        elif strategy is Strategy.PRIORITY and survivors:
            first = survivors[0][0].model.alias
            reason += (
                ": policy default"
                if rule.name == "default" and first == policy.default_model
                else ": priority order"
            )
        fallbacks = self.eligible(rule.fallbacks)
        considered = tuple(p.model.alias for p in rule.candidates) + tuple(
            p.model.alias for p in rule.fallbacks
        )
        if not survivors and not fallbacks:
            self._raise_none(rule)
        ordered = self.spread(survivors + fallbacks)
        shadow = self._shadow(rule)
        return RoutePlan(
            policy.policy_id,
            policy.version,
            rule.name,
            strategy.value,
            considered,
            tuple(self.dropped),
            ordered,
            reason,
            shadow,
            rule.retry,
            arm,
            tuple(self.deferred),
        )

    def eligible(self, models: tuple[PricedModel, ...]) -> list[_Survivor]:
        """The models (and their deployments) that satisfy every constraint; drops recorded."""
        q = self.query
        c = self.constraints
        data_class = q.data_classification
        needs_cert = (
            c.certification_required_from is not None
            and data_class is not DataClass.UNSPECIFIED
            and data_class >= c.certification_required_from
        )
        needed_window = q.estimated_input_tokens + (q.max_output_tokens or 0)
        out: list[_Survivor] = []
        for priced in models:
            model = priced.model
            alias = model.alias
            if not q.capabilities <= model.capabilities:
                missing = _missing(model, q)
                assert missing is not None
                self.dropped.append((alias, f"lacks capability {missing.value!r}"))
                continue
            if model.context_window and needed_window > model.context_window:
                self.dropped.append(
                    (alias, f"context window {model.context_window} < {needed_window} tokens needed")
                )
                continue
            if needs_cert and priced.certified_up_to < data_class:
                self.dropped.append((alias, f"not certified for {data_class.name.lower()} data"))
                continue
            if c.max_cost_nanos is not None:
                cost = priced.estimated_cost_nanos(q.estimated_input_tokens, q.max_output_tokens)
                if cost > c.max_cost_nanos:
                    self.dropped.append((alias, f"estimated cost {cost} nano-USD > max {c.max_cost_nanos}"))
                    continue
            deployments = self._deployments(priced)
            if deployments:
                out.append((priced, deployments))
        return out

    def _deployments(self, priced: PricedModel) -> list[tuple[DeploymentConfig, ProviderConfig]]:
        c = self.constraints
        mode = self.node.mode
        providers = self.config.providers
        ok: list[tuple[DeploymentConfig, ProviderConfig]] = []
        for d in priced.model.deployments:
            p = providers[d.provider_id]
            why = ""
            if mode is DeploymentMode.AIR_GAPPED:
                if p.location is not ProviderLocation.SITE or p.site != self.node.site:
                    why = f"air-gapped node only calls its own site {self.node.site!r}"
            elif mode is DeploymentMode.ON_PREM and not c.allow_egress:
                if p.location is ProviderLocation.PUBLIC_CLOUD:
                    why = "on-prem node: policy does not allow egress to public cloud"
                elif p.location is ProviderLocation.SITE and self.node.site and p.site != self.node.site:
                    why = f"on-prem node: site {p.site!r} is not this node's"
            if not why and c.regions is not None and p.region not in c.regions:
                why = f"region {p.region or 'unknown'!r} not allowed"
            if not why and c.jurisdictions is not None and p.jurisdiction not in c.jurisdictions:
                why = f"jurisdiction {p.jurisdiction or 'unknown'!r} not allowed"
            if not why and c.max_latency_ms is not None:
                latency = self._observed(d, priced.model)
                if latency is not None and latency > c.max_latency_ms:
                    why = f"latency {latency:.0f} ms > max {c.max_latency_ms} ms"
            if why:
                self.dropped.append((f"{priced.model.alias}@{p.name or p.id}", why))
            else:
                ok.append((d, p))
        return ok

    def _observed(self, d: DeploymentConfig, model: ModelConfig) -> float | None:
        if self.health is not None:
            h = self.health.get(d.id or f"{d.provider_id}/{d.upstream_model}")
            if h is not None and h.latency_ms is not None:
                return h.latency_ms
        return float(model.typical_latency_ms) if model.typical_latency_ms else None

    def _latency_of(self, survivor: _Survivor) -> float:
        best = float("inf")
        for d, _ in survivor[1]:
            latency = self._observed(d, survivor[0].model)
            if latency is not None and latency < best:
                best = latency
        return best

    def _arm(self, rule: CompiledRule, survivors: list[_Survivor]) -> int:
        """Index in ``survivors`` of the request's arm: stable per sticky key."""
        u = stable_fraction(f"{rule.name}\x00{sticky_value(rule.sticky_key, self.query)}")
        weights = rule.cumulative_weights
        if len(survivors) == len(rule.candidates):
            for i, edge in enumerate(weights):
                if u < edge:
                    return i
            return len(weights) - 1
        # An arm was dropped for this request: split its share over the others
        # in proportion, so the remaining arms keep their relative weights.
        position = {p.model.alias: i for i, p in enumerate(rule.candidates)}
        shares = []
        for priced, _ in survivors:
            i = position[priced.model.alias]
            shares.append(weights[i] - (weights[i - 1] if i else 0.0))
        total = sum(shares)
        if total <= 0:
            return 0
        running = 0.0
        for i, share in enumerate(shares):
            running += share / total
            if u < running:
                return i
        return len(shares) - 1

    def spread(self, survivors: list[_Survivor]) -> tuple[Candidate, ...]:
        """Candidates in model order; within a model, weighted by a stable hash of the request id."""
        ordered: list[Candidate] = []
        back: list[Candidate] = []
        for priced, deployments in survivors:
            if len(deployments) > 1:
                deployments = self._balance(priced.model.alias, deployments)
            for d, p in deployments:
                candidate = Candidate(priced.model, d, p)
                why = self._unavailable(candidate)
                if why:
                    self.deferred.append((candidate.label, why))
                    back.append(candidate)
                else:
                    ordered.append(candidate)
        return tuple(ordered + back)

    def _unavailable(self, candidate: Candidate) -> str:
        if self.health is None:
            return ""
        h = self.health.get(candidate.key)
        if h is None:
            return ""
        if h.state is BreakerState.OPEN:
            return "circuit breaker open"
        if h.blocked_for_s > 0:
            return f"Retry-After for {h.blocked_for_s:.1f} s"
        return ""

    def _balance(
        self, alias: str, deployments: list[tuple[DeploymentConfig, ProviderConfig]]
    ) -> list[tuple[DeploymentConfig, ProviderConfig]]:
        total = sum(d.weight for d, _ in deployments)
        if total <= 0:
            return deployments
        u = stable_fraction(f"{alias}\x00{self.query.request_id}") * total
        running = 0
        for i, (d, _) in enumerate(deployments):
            running += d.weight
            if u < running:
                # The drawn one first, then the rest in registry order as its fallbacks.
                return [deployments[i], *deployments[:i], *deployments[i + 1 :]]
        return deployments

    def _shadow(self, rule: CompiledRule) -> Candidate | None:
        shadow = rule.shadow
        if shadow is None or shadow.share <= 0:
            return None
        key = shadow.key or rule.sticky_key
        if (
            shadow.share < 1
            and stable_fraction(f"shadow\x00{rule.name}\x00{sticky_value(key, self.query)}") >= shadow.share
        ):
            return None
        # A shadow sees the same request, so it must satisfy the same constraints
        # (residency, certification) as a real candidate would.
        marker = len(self.dropped)
        survivors = self.eligible((shadow.model,))
        for i in range(marker, len(self.dropped)):
            name, why = self.dropped[i]
            self.dropped[i] = (name, f"shadow: {why}")
        if not survivors:
            return None
        priced, deployments = survivors[0]
        if len(deployments) > 1:
            deployments = self._balance(priced.model.alias, deployments)
        d, p = deployments[0]
        return Candidate(priced.model, d, p)

    def _raise_none(self, rule: CompiledRule) -> None:
        missing = [why for _, why in self.dropped if why.startswith("lacks capability")]
        if missing and len(missing) == len(self.dropped):
            capability = min(c for c in self.query.capabilities)
            for priced in rule.candidates:
                found = _missing(priced.model, self.query)
                if found is not None:
                    capability = found
                    break
            raise CapabilityUnavailable(
                capability.value, f"no allowed model has capability {capability.value!r}"
            )
        summary = "; ".join(f"{name}: {why}" for name, why in self.dropped[:5])
        raise NoEligibleCandidate(
            f"rule {rule.name!r}: no candidate satisfies the policy ({summary})", tuple(self.dropped)
        )
