"""Choose, for one request, the ordered deployments to try.

``plan_route`` is pure: no I/O, no clocks, no randomness; everything comes from
the ``RuntimeConfig``, the request's features, the node's context and (when
given) a read-only view of deployment health, so the admin API can dry-run it
and two nodes with the same inputs decide the same way. (It memoises the
request-independent part of each rule on the compiled policy, keyed by the
identity of the providers and node it was computed for; that changes how fast
a decision is, never what it is.)

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

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dataplane.config.model import (
    Capability,
    DataClass,
    DeploymentMode,
    ModelConfig,
    ProviderConfig,
    ProviderLocation,
    RuntimeConfig,
    TenantConfig,
)
from dataplane.errors import CapabilityUnavailable, NotFound, PermissionDenied
from dataplane.routing.candidate import Candidate as Candidate  # re-exported: callers import it from here
from dataplane.routing.errors import NoEligibleCandidate
from dataplane.routing.health import BreakerState, HealthView
from dataplane.routing.policy import (
    DEFAULT_RETRY,
    MATCH_ALL,
    CompiledPolicy,
    CompiledRule,
    Constraints,
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
    policies = config.policies
    policy = policies.get(query.tenant.id) or policies.get("")
    if policy is None:
        policy = policy_for(config, query.tenant)  # raises PermissionDenied
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
    rows, _ = rule_rows(_explicit_rule(policy, model), config.providers, node)
    survivors = planner.eligible(rows)
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


def _explicit_rule(policy: CompiledPolicy, model: ModelConfig) -> CompiledRule:
    # One rule per model a caller names, kept on the policy so its static checks
    # are memoised like any rule's (the model object is compared by identity).
    entry = policy.memo.get(model.alias)
    if entry is not None and entry[0] is model:
        found: CompiledRule = entry[1]
        return found
    rule = CompiledRule(
        "explicit",
        MATCH_ALL,
        Strategy.PRIORITY,
        (PricedModel.of(model),),
        constraints=policy.constraints,
        retry=policy.retry,
        considered=(model.alias,),
    )
    policy.memo[model.alias] = (model, rule)
    return rule


def _unbounded_default(config: RuntimeConfig, policy: CompiledPolicy) -> CompiledRule:
    # A policy without allowed_models may use the whole registry: resolved on
    # first use against each registry (not at compile time, where it would cost
    # every such tenant a registry-sized rule) and kept on the policy.
    models = config.models
    entry = policy.memo.get(id(models))
    if entry is not None and entry[0] is models:
        found: CompiledRule = entry[1]
        return found
    names = sorted(models)
    if policy.default_model:
        names = [policy.default_model, *(n for n in names if n != policy.default_model)]
    rule = CompiledRule(
        "default",
        MATCH_ALL,
        Strategy.PRIORITY,
        tuple(PricedModel.of(models[n]) for n in names),
        constraints=policy.constraints,
        retry=policy.retry,
        considered=tuple(names),
    )
    policy.memo[id(models)] = (models, rule)
    return rule


def _first_match(rules: tuple[CompiledRule, ...], q: RouteQuery) -> CompiledRule | None:
    for rule in rules:
        m = rule.match
        if m is MATCH_ALL:
            return rule
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


_Survivor = tuple[PricedModel, Sequence[Candidate], int, tuple[float, ...] | None]
"""A model that passed, its passing deployments, its estimated cost for the request
(0 when the strategy does not need it), and the deployments' cumulative weight
shares when precomputed."""

_AIR_GAPPED = DeploymentMode.AIR_GAPPED
_ON_PREM = DeploymentMode.ON_PREM
_SITE = ProviderLocation.SITE
_PUBLIC_CLOUD = ProviderLocation.PUBLIC_CLOUD
_OPEN = BreakerState.OPEN
_STRATEGY_NAMES = {s: s.value for s in Strategy}
_PRIORITY, _CHEAPEST, _LATENCY, _WEIGHTED = (
    Strategy.PRIORITY,
    Strategy.CHEAPEST,
    Strategy.LATENCY,
    Strategy.WEIGHTED,
)


_Row = tuple[
    PricedModel,
    frozenset[Capability],
    int,
    int,
    int,
    int,
    int,
    tuple[Candidate, ...],
    tuple[tuple[str, str], ...],
    tuple[float, ...] | None,
    tuple[PricedModel, tuple[Candidate, ...], int, tuple[float, ...] | None],
]
"""A candidate model flattened for the per-request loop: model, capabilities,
context window, certified-up-to, input price, output price, default output
tokens, the deployments that pass the static checks, the static drops, and the
passing deployments' cumulative weight shares (None for fewer than two), and the
row as the survivor of a request nothing drops (shared by every rule using it)."""


def static_row(
    priced: PricedModel, constraints: Constraints, providers: Mapping[str, ProviderConfig], node: NodeContext
) -> _Row:
    """``priced`` with the request-independent checks (node mode, region,
    jurisdiction) done: what passes, and what is dropped and why.

    Memoised on the model (which lives as long as its registry): these depend
    only on the constraints, the providers and the node, and doing them once
    instead of per request is most of what keeps a decision cheap. The memo
    holds the objects it was computed from and compares them by identity, so a
    new snapshot or policy is never answered from an old entry.
    """
    entry = priced.memo.get(id(constraints))
    if (
        entry is not None
        and entry[0] is constraints
        and entry[1] is providers
        and (entry[2] is node or entry[2] == node)
    ):
        row: _Row = entry[3]
        return row
    ok: list[Candidate] = []
    drops: list[tuple[str, str]] = []
    mode = node.mode
    for d in priced.model.deployments:
        p = providers[d.provider_id]
        why = ""
        if mode is _AIR_GAPPED:
            if p.location is not _SITE or p.site != node.site:
                why = f"air-gapped node only calls its own site {node.site!r}"
        elif mode is _ON_PREM and not constraints.allow_egress:
            if p.location is _PUBLIC_CLOUD:
                why = "on-prem node: policy does not allow egress to public cloud"
            elif p.location is _SITE and node.site and p.site != node.site:
                why = f"on-prem node: site {p.site!r} is not this node's"
        if not why and constraints.regions is not None and p.region not in constraints.regions:
            why = f"region {p.region or 'unknown'!r} not allowed"
        if (
            not why
            and constraints.jurisdictions is not None
            and p.jurisdiction not in constraints.jurisdictions
        ):
            why = f"jurisdiction {p.jurisdiction or 'unknown'!r} not allowed"
        if why:
            drops.append((f"{priced.model.alias}@{p.name or p.id}", why))
        else:
            ok.append(Candidate(priced.model, d, p))
    m = priced.model
    passing = tuple(ok)
    cumulative = _cumulative(passing)
    row = (
        priced,
        m.capabilities,
        m.context_window,
        int(priced.certified_up_to),
        priced.in_price,
        priced.out_price,
        priced.default_output,
        passing,
        tuple(drops),
        cumulative,
        (priced, passing, 0, cumulative),
    )
    priced.memo[id(constraints)] = (constraints, providers, node, row)
    return row


class _RowSet:
    """A rule's rows with what lets most requests skip the per-row checks: the
    capabilities every row has, the smallest context window, the least
    certification, and the static drops of all rows together."""

    __slots__ = (
        "common_caps",
        "drops",
        "least_certified",
        "narrowed",
        "need_drops",
        "plain",
        "rows",
        "smallest_window",
        "unlimited_window",
        "usable",
    )

    def __init__(self, rows: tuple[_Row, ...], need_drops: tuple[tuple[str, str], ...] = ()) -> None:
        self.rows = rows
        self.need_drops = need_drops
        """Drops made when narrowing to a request's needs (capability, certification)."""
        self.narrowed: dict[tuple[frozenset[Capability], int], _RowSet] = {}
        caps: frozenset[Capability] | None = None
        smallest = 0
        least = 4
        drops: list[tuple[str, str]] = []
        usable = []
        for row in rows:
            caps = row[1] if caps is None else caps & row[1]
            if row[2] and (not smallest or row[2] < smallest):
                smallest = row[2]
            if row[3] < least:
                least = row[3]
            if row[8]:
                drops.extend(row[8])
            if row[7]:
                usable.append(row)
        self.common_caps = caps or frozenset()
        self.smallest_window = smallest
        """The smallest limit among rows that have one; rows without a limit always fit."""
        self.unlimited_window = not smallest
        self.least_certified = least if rows else 0
        self.drops = need_drops + tuple(drops)
        """Every drop of a request that nothing else drops: needs, then static checks."""
        self.usable = tuple(usable)
        """Rows with at least one deployment passing the static checks."""
        self.plain: tuple[_Survivor, ...] = tuple(r[10] for r in usable)
        """``usable`` as survivors of a request nothing can drop, when cost does not matter."""

    def narrow(self, capabilities: frozenset[Capability], certified_for: int) -> _RowSet:
        """The rows having ``capabilities`` and certified for ``certified_for`` (0: no need).

        Memoised: requests come with few distinct needs, so the per-row checks
        and the reasons' text are made once per need, not once per request.
        """
        key = (capabilities, certified_for)
        found = self.narrowed.get(key)
        if found is not None:
            return found
        kept: list[_Row] = []
        drops: list[tuple[str, str]] = []
        for row in self.rows:
            alias = row[0].model.alias
            if capabilities and not capabilities <= row[1]:
                missing = min(c for c in capabilities if c not in row[1])
                drops.append((alias, f"lacks capability {missing.value!r}"))
            elif certified_for and row[3] < certified_for:
                drops.append((alias, f"not certified for {DataClass(certified_for).name.lower()} data"))
            else:
                kept.append(row)
        found = self.narrowed[key] = _RowSet(tuple(kept), tuple(drops))
        return found


def rule_rows(
    rule: CompiledRule, providers: Mapping[str, ProviderConfig], node: NodeContext
) -> tuple[_RowSet, _RowSet | None]:
    """``static_row`` for a rule's candidates and fallbacks, memoised on the rule."""
    entry = rule.memo.get(id(providers))
    if entry is not None and entry[0] is providers and (entry[1] is node or entry[1] == node):
        rows: tuple[_RowSet, _RowSet | None] = entry[2]
        return rows
    c = rule.constraints
    rows = (
        _RowSet(tuple(static_row(p, c, providers, node) for p in rule.candidates)),
        _RowSet(tuple(static_row(p, c, providers, node) for p in rule.fallbacks)) if rule.fallbacks else None,
    )
    rule.memo[id(providers)] = (providers, node, rows)
    return rows


def prepare_routes(config: RuntimeConfig, node: NodeContext = NodeContext()) -> None:
    """Do every rule's request-independent checks now rather than on first use.

    Optional: call it when a snapshot is applied (off the request path) so the
    first request of each tenant costs no more than the next ones.
    """
    for policy in config.policies.values():
        for rule in policy.rules:
            rule_rows(rule, config.providers, node)
        if policy.default_rule is not None:
            rule_rows(policy.default_rule, config.providers, node)


def _cumulative(candidates: Sequence[Candidate]) -> tuple[float, ...] | None:
    """Running weight shares of ``candidates`` (ending at 1.0), or None if there is nothing to balance."""
    total = sum(c.deployment.weight for c in candidates)
    if len(candidates) < 2 or total <= 0:
        return None
    running = 0
    shares = []
    for c in candidates:
        running += c.deployment.weight
        shares.append(running / total)
    shares[-1] = 1.0
    return tuple(shares)


def _cost(survivor: _Survivor) -> int:
    return survivor[2]


class _Planner:
    """One decision's working state: what survived and what was dropped, and why."""

    __slots__ = ("balance_draw", "config", "constraints", "deferred", "dropped", "health", "node", "query")

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
        self.balance_draw = -1.0

    def plan(self, policy: CompiledPolicy, rule: CompiledRule) -> RoutePlan:
        rows, fallback_rows = rule_rows(rule, self.config.providers, self.node)
        survivors = self.eligible(rows, rule.strategy is _CHEAPEST)
        arm = ""
        strategy = rule.strategy
        if strategy is _PRIORITY:
            how = (
                "policy default"
                if survivors
                and rule.name == "default"
                and survivors[0][0].model.alias == policy.default_model
                else "priority order"
            )
        elif strategy is _CHEAPEST:
            if len(survivors) > 1:
                survivors.sort(key=_cost)
            how = "cheapest estimated cost"
        elif strategy is _LATENCY:
            if len(survivors) > 1:
                survivors.sort(key=self._latency_of)
            how = "lowest observed latency"
        else:
            how = "weighted split"
            if survivors:
                chosen = self._arm(rule, survivors)
                arm = survivors[chosen][0].model.alias
                if chosen:
                    survivors.insert(0, survivors.pop(chosen))
                how = f"weighted split arm {arm!r}"
        if fallback_rows is not None:
            survivors += self.eligible(fallback_rows)
        if not survivors:
            self._raise_none(rule)
        ordered = self.spread(survivors)
        shadow = self._shadow(rule) if rule.shadow is not None else None  # before the drops are frozen
        return RoutePlan(
            policy.policy_id,
            policy.version,
            rule.name,
            _STRATEGY_NAMES[strategy],
            rule.considered,
            tuple(self.dropped),
            ordered,
            f"rule {rule.name!r}: {how}",
            shadow,
            rule.retry,
            arm,
            tuple(self.deferred),
        )

    def eligible(self, rowset: _RowSet, costed: bool = False) -> list[_Survivor]:
        """The models (and their deployments) that satisfy every constraint; drops recorded.

        With ``costed``, survivors carry the request's estimated cost (for ``cheapest``).
        """
        q = self.query
        c = self.constraints
        data_class = int(q.data_classification)
        certify = c.certification_required_from
        cert_need = data_class if certify is not None and data_class != 0 and data_class >= certify else 0
        capabilities = q.capabilities
        if (capabilities and not capabilities <= rowset.common_caps) or (
            cert_need and rowset.least_certified < cert_need
        ):
            rowset = rowset.narrow(capabilities, cert_need)
        tokens = q.estimated_input_tokens
        max_out = q.max_output_tokens
        needed_window = tokens + (max_out or 0)
        if (
            c.max_cost_nanos is None
            and c.max_latency_ms is None
            and (rowset.unlimited_window or needed_window <= rowset.smallest_window)
        ):
            # The common case: only the request's needs and the static checks
            # drop rows, and both are precomputed; no row needs looking at.
            if rowset.drops:
                self.dropped.extend(rowset.drops)
            if not costed:
                return list(rowset.plain)
            return [
                (
                    row[0],
                    row[7],
                    (tokens * row[4] + (row[6] if max_out is None else max_out) * row[5]) // 1_000_000,
                    row[9],
                )
                for row in rowset.usable
            ]
        if rowset.need_drops:
            self.dropped.extend(rowset.need_drops)
        return self._check_rows(rowset.rows, needed_window)

    def _check_rows(self, rows: tuple[_Row, ...], needed_window: int) -> list[_Survivor]:
        """The per-request numeric checks (window, cost, latency) of rows that meet the needs."""
        q = self.query
        c = self.constraints
        dropped = self.dropped
        tokens = q.estimated_input_tokens
        max_out = q.max_output_tokens
        max_cost = c.max_cost_nanos
        max_latency = c.max_latency_ms
        out: list[_Survivor] = []
        for priced, _, window, _, in_price, out_price, default_out, candidates, drops, cum, _ in rows:
            if window and needed_window > window:
                dropped.append(
                    (priced.model.alias, f"context window {window} < {needed_window} tokens needed")
                )
                continue
            cost = (
                tokens * in_price + (default_out if max_out is None else max_out) * out_price
            ) // 1_000_000
            if max_cost is not None and cost > max_cost:
                dropped.append((priced.model.alias, f"estimated cost {cost} nano-USD > max {max_cost}"))
                continue
            if drops:
                dropped.extend(drops)
            if max_latency is not None and candidates:
                fast = self._fast_enough(candidates, max_latency)
                if fast:
                    out.append((priced, fast, cost, cum if len(fast) == len(candidates) else None))
            elif candidates:
                out.append((priced, candidates, cost, cum))
        return out

    def _fast_enough(self, candidates: Sequence[Candidate], max_latency: int) -> list[Candidate]:
        ok = []
        for candidate in candidates:
            latency = self._observed(candidate)
            if latency is not None and latency > max_latency:
                self.dropped.append((candidate.label, f"latency {latency:.0f} ms > max {max_latency} ms"))
            else:
                ok.append(candidate)
        return ok

    def _observed(self, candidate: Candidate) -> float | None:
        if self.health is not None:
            h = self.health.get(candidate.key)
            if h is not None and h.latency_ms is not None:
                return h.latency_ms
        typical = candidate.model.typical_latency_ms
        return float(typical) if typical else None

    def _latency_of(self, survivor: _Survivor) -> float:
        best = float("inf")
        for candidate in survivor[1]:
            latency = self._observed(candidate)
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
        for priced, _, _, _ in survivors:
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
        troubled = self.health.troubled() if self.health is not None else None
        for _, candidates, _, cumulative in survivors:
            if len(candidates) > 1:
                candidates = self._balance(candidates, cumulative)
            if not troubled:
                ordered.extend(candidates)
                continue
            for candidate in candidates:
                h = troubled.get(candidate.key)
                if h is None:
                    ordered.append(candidate)
                    continue
                why = (
                    "circuit breaker open" if h.state is _OPEN else f"Retry-After for {h.blocked_for_s:.1f} s"
                )
                self.deferred.append((candidate.label, why))
                back.append(candidate)
        if back:
            ordered += back
        return tuple(ordered)

    def _balance(
        self, candidates: Sequence[Candidate], cumulative: tuple[float, ...] | None
    ) -> Sequence[Candidate]:
        if cumulative is None:
            cumulative = _cumulative(candidates)
            if cumulative is None:
                return candidates
        if self.balance_draw < 0:
            # One draw per request serves every model: each model's pick only
            # needs to be spread by weight over requests, not independent of the
            # others. CRC-32 is enough to spread load and costs a fifth of a
            # cryptographic hash; sticky splits keep the better one.
            self.balance_draw = zlib.crc32(self.query.request_id.encode()) / 4294967296.0
        u = self.balance_draw
        for i, edge in enumerate(cumulative):
            if u < edge:
                if i == 0:
                    return candidates
                # The drawn one first, then the rest in registry order as its fallbacks.
                return [candidates[i], *candidates[:i], *candidates[i + 1 :]]
        return candidates

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
        row = static_row(shadow.model, self.constraints, self.config.providers, self.node)
        survivors = self.eligible(_RowSet((row,)))
        for i in range(marker, len(self.dropped)):
            name, why = self.dropped[i]
            self.dropped[i] = (name, f"shadow: {why}")
        if not survivors:
            return None
        _, candidates, _, cumulative = survivors[0]
        if len(candidates) > 1:
            candidates = self._balance(candidates, cumulative)
        return candidates[0]

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
