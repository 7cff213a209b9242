"""Choose, for one request, the ordered deployments to try.

``plan_route`` is a pure function of the route table (the snapshot prepared
for one node: ``dataplane.routing.table``), the request's query and (when
given) a read-only view of deployment health: no I/O, no clocks, no randomness,
so the admin API can dry-run it and two nodes with the same inputs decide the
same way.

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
from dataclasses import replace

from dataplane.config.model import (
    MATCH_ALL,
    Capability,
    CompiledPolicy,
    CompiledRule,
    Constraints,
    ModelConfig,
    Strategy,
)
from dataplane.errors import (
    CapabilityUnavailable,
    CredentialUnavailable,
    InvalidRequest,
    NoEligibleCandidate,
    NotFound,
    PermissionDenied,
    shown,
)
from dataplane.routing.candidate import Candidate
from dataplane.routing.health import BreakerState, HealthView
from dataplane.routing.query import RoutePlan, RouteQuery, stable_fraction, sticky_value
from dataplane.routing.table import (
    PolicyRoutes,
    RouteTable,
    Row,
    RowSet,
    RuleRoutes,
    Survivor,
    cumulative_shares,
)

_OPEN = BreakerState.OPEN
_NONE: Mapping[str, str] = {}
_STRATEGY_NAMES = {s: s.value for s in Strategy}
_PRIORITY, _CHEAPEST, _LATENCY, _WEIGHTED = (
    Strategy.PRIORITY,
    Strategy.CHEAPEST,
    Strategy.LATENCY,
    Strategy.WEIGHTED,
)


def plan_route(table: RouteTable, query: RouteQuery, health: HealthView | None = None) -> RoutePlan:
    """The ordered candidates for ``query`` under the tenant's policy.

    ``health`` (usually ``Dispatcher.health``) lets observed latency and open
    breakers shape the order; without it the plan uses the registry's figures.

    Raises NotFound (a model that is unknown or not allowed: the caller cannot tell
    which), PermissionDenied (no policy),
    CapabilityUnavailable (no allowed model has what the request needs) or
    NoEligibleCandidate (every candidate was dropped by a constraint).
    """
    routes = table.routes_for(query.tenant.id)
    if routes is None:
        tenant = query.tenant
        raise PermissionDenied(f"tenant {tenant.name or tenant.id!r} has no routing policy")
    if query.model:
        return _explicit(table, routes.policy, query, health)
    chosen = _first_match(routes, query)
    return _Planner(table, query, health, chosen.rule.constraints).plan(routes.policy, chosen)


def plan_request(
    table: RouteTable,
    query: RouteQuery,
    health: HealthView | None = None,
    unusable: Mapping[str, str] = _NONE,
) -> RoutePlan:
    """``plan_route``, then without the candidates this node cannot use.

    ``unusable`` maps provider ids to why the node cannot call them (say, a
    missing credential); candidates that cannot honour the request's
    ``max_output_tokens`` go too. Raises CredentialUnavailable or InvalidRequest
    when nothing is left.
    """
    return usable_plan(plan_route(table, query, health), query, unusable)


def usable_plan(plan: RoutePlan, query: RouteQuery, unusable: Mapping[str, str] = _NONE) -> RoutePlan:
    """``plan`` without the candidates this node cannot use (see ``plan_request``)."""
    ordered = plan.ordered
    if unusable:
        ordered = tuple(c for c in ordered if c.provider.id not in unusable)
        if not ordered:
            # Why a provider is unusable names node detail (env vars, paths): that
            # is for the node's operator (its log), never for the caller.
            raise CredentialUnavailable("provider credentials unavailable")
    max_output_tokens = query.max_output_tokens
    if max_output_tokens is not None:
        fits = tuple(
            c
            for c in ordered
            if not c.model.max_output_tokens or max_output_tokens <= c.model.max_output_tokens
        )
        if not fits:
            model = ordered[0].model
            raise InvalidRequest(
                "params.max_output_tokens",
                f"{max_output_tokens} is above the maximum of model {model.alias!r} ({model.max_output_tokens})",
            )
        if len(fits) != len(ordered):  # else the plan stands as it is: no copy per request
            ordered = fits
    if ordered is not plan.ordered:
        plan = replace(plan, ordered=ordered)
    return plan


def _explicit(
    table: RouteTable, policy: CompiledPolicy, query: RouteQuery, health: HealthView | None
) -> RoutePlan:
    model = table.config.models.get(query.model)
    allowed = policy.allowed_models
    if model is None or allowed is None or model.alias not in allowed:
        # A model the policy does not allow is, to this caller, a model that does
        # not exist: the same status and message, so no tenant can probe for the
        # names of other tenants' models.
        raise NotFound(f"model: unknown model {shown(query.model)}")
    missing = _missing(model, query)
    if missing is not None:
        raise CapabilityUnavailable(
            missing.value, f"model {model.alias!r} lacks capability {missing.value!r}"
        )
    # The caller chose the model, not the constraints: residency, certification
    # and the node's mode still hold.
    named = table.explicit(policy, model)
    key = (query.capabilities, query.data_classification)
    if health is None or not health.troubled():
        found = named.plans.get(key)
        if found is not None:
            window, plan = found
            if not window or query.estimated_input_tokens + (query.max_output_tokens or 0) <= window:
                return plan
    planner = _Planner(table, query, health, policy.constraints)
    survivors = planner.eligible(named.rows)
    if not survivors:
        raise NoEligibleCandidate(
            f"model {model.alias!r} is not eligible: {planner.dropped[0][1]}", tuple(planner.dropped)
        )
    ordered = planner.spread(survivors)
    plan = RoutePlan(
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
    if planner.fits_up_to is not None and not planner.deferred and planner.balance_draw < 0:
        # Made of nothing but the request's needs (its size checked against one window, which
        # is kept; no cost or latency ceiling, no breaker, no draw by request id): the next
        # request with the same needs and a size within that window gets the same plan.
        named.plans[key] = (planner.fits_up_to, plan)
    return plan


def _first_match(routes: PolicyRoutes, q: RouteQuery) -> RuleRoutes:
    for prepared in routes.rules:
        m = prepared.rule.match
        if m is MATCH_ALL:
            return prepared
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
        return prepared
    return routes.default


def _missing(model: ModelConfig, query: RouteQuery) -> Capability | None:
    if query.capabilities <= model.capabilities:
        return None
    return min(c for c in query.capabilities if c not in model.capabilities)


def _cost(survivor: Survivor) -> int:
    return survivor[2]


class _Planner:
    """One decision's working state: what survived and what was dropped, and why."""

    __slots__ = ("balance_draw", "constraints", "deferred", "dropped", "fits_up_to", "health", "query")

    def __init__(
        self,
        table: RouteTable,
        query: RouteQuery,
        health: HealthView | None,
        constraints: Constraints,
    ) -> None:
        self.query = query
        self.health = health
        self.constraints = constraints
        self.dropped: list[tuple[str, str]] = []
        self.deferred: list[tuple[str, str]] = []
        self.balance_draw = -1.0
        self.fits_up_to: int | None = None
        """Set by ``eligible`` when only the request's needs decided, not its size: the
        smallest context window of the rows (0: none has one), which a request of the same
        needs must fit for the same rows to survive."""

    def plan(self, policy: CompiledPolicy, prepared: RuleRoutes) -> RoutePlan:
        rule = prepared.rule
        rows, fallback_rows = prepared.rows, prepared.fallbacks
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
        shadow = (
            self._shadow(rule, prepared.shadow) if prepared.shadow is not None else None
        )  # before the drops are frozen
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

    def eligible(self, rowset: RowSet, costed: bool = False) -> list[Survivor]:
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
            self.fits_up_to = 0 if rowset.unlimited_window else rowset.smallest_window
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

    def _check_rows(self, rows: tuple[Row, ...], needed_window: int) -> list[Survivor]:
        """The per-request numeric checks (window, cost, latency) of rows that meet the needs."""
        q = self.query
        c = self.constraints
        dropped = self.dropped
        tokens = q.estimated_input_tokens
        max_out = q.max_output_tokens
        max_cost = c.max_cost_nanos
        max_latency = c.max_latency_ms
        out: list[Survivor] = []
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

    def _latency_of(self, survivor: Survivor) -> float:
        best = float("inf")
        for candidate in survivor[1]:
            latency = self._observed(candidate)
            if latency is not None and latency < best:
                best = latency
        return best

    def _arm(self, rule: CompiledRule, survivors: list[Survivor]) -> int:
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

    def spread(self, survivors: list[Survivor]) -> tuple[Candidate, ...]:
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
            cumulative = cumulative_shares(candidates)
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

    def _shadow(self, rule: CompiledRule, rows: RowSet) -> Candidate | None:
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
        survivors = self.eligible(rows)
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
