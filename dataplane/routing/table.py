"""The route table: everything about routing that does not depend on the request.

A node builds one ``RouteTable`` per applied snapshot and node context (mode and
site), off the request path, and keeps it in its serving state next to the
snapshot; ``plan_route`` reads it. For each tenant's policy and each rule, the
table holds the candidate models as *rows*: the model's figures flattened for
the per-request loop, its deployments that pass the request-independent checks
(the node's mode and site, the rule's regions and jurisdictions) and the
deployments dropped by them, with the reason. A decision then only does what
depends on the request.

The table is built from immutable inputs and never changes after it is built;
the exceptions are caches of pure functions of it: ``RowSet.narrow``'s rows that meet
a given set of needs (bounded by the few distinct capability sets and data classes
requests come with), and ``RouteTable.explicit``'s row of each model a caller names
under each policy, with the plans ``plan_route`` may reuse for it (``ExplicitRoutes``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from dataplane.config.model import (
    MATCH_ALL,
    Capability,
    CompiledPolicy,
    CompiledRule,
    Constraints,
    DataClass,
    DeploymentMode,
    ModelConfig,
    PricedModel,
    ProviderConfig,
    ProviderLocation,
    RetrySettings,
    RuntimeConfig,
    Strategy,
)
from dataplane.routing.candidate import Candidate
from dataplane.routing.query import CLOUD_NODE, NodeContext, RoutePlan

Survivor = tuple[PricedModel, Sequence[Candidate], int, tuple[float, ...] | None]
"""A model that passed, its passing deployments, its estimated cost for the request
(0 when the strategy does not need it), and the deployments' cumulative weight
shares when precomputed."""

Row = tuple[
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
    Survivor,
]
"""A candidate model flattened for the per-request loop: model, capabilities,
context window, certified-up-to, input price, output price, default output
tokens, the deployments that pass the static checks, the static drops, the
passing deployments' cumulative weight shares (None for fewer than two), and the
row as the survivor of a request nothing drops (shared by every rule using it)."""

_AIR_GAPPED = DeploymentMode.AIR_GAPPED
_ON_PREM = DeploymentMode.ON_PREM
_SITE = ProviderLocation.SITE
_PUBLIC_CLOUD = ProviderLocation.PUBLIC_CLOUD


def deployment_drop(provider: ProviderConfig, constraints: Constraints, node: NodeContext) -> str:
    """Why a deployment at ``provider`` may not serve under ``constraints`` on ``node``; "" if it may."""
    mode = node.mode
    if mode is _AIR_GAPPED:
        if provider.location is not _SITE or provider.site != node.site:
            return f"air-gapped node only calls its own site {node.site!r}"
    elif mode is _ON_PREM and not constraints.allow_egress:
        if provider.location is _PUBLIC_CLOUD:
            return "on-prem node: policy does not allow egress to public cloud"
        if provider.location is _SITE and node.site and provider.site != node.site:
            return f"on-prem node: site {provider.site!r} is not this node's"
    if constraints.regions is not None and provider.region not in constraints.regions:
        return f"region {provider.region or 'unknown'!r} not allowed"
    if constraints.jurisdictions is not None and provider.jurisdiction not in constraints.jurisdictions:
        return f"jurisdiction {provider.jurisdiction or 'unknown'!r} not allowed"
    return ""


def unreachable(providers: Iterable[ProviderConfig], node: NodeContext) -> str:
    """Why no deployment of a snapshot with ``providers`` could ever serve on ``node``
    whatever the policy says; "" when some could. Only an air-gapped node's own site
    decides that alone: a node started without ``--site`` (or with another group's)
    refuses every request, and says so at each snapshot it applies rather than at each
    request only."""
    if node.mode is not _AIR_GAPPED:
        return ""
    providers = list(providers)
    if not providers or any(p.location is _SITE and p.site == node.site for p in providers):
        return ""
    sites = sorted({p.site for p in providers if p.location is _SITE})
    listed = ", ".join(repr(site) for site in sites[:5]) + (", ..." if len(sites) > 5 else "")
    where = f"their sites: {listed}" if sites else "none is located in a site"
    return (
        f"this air-gapped node calls only providers located in its own site {node.site!r}, and none of "
        f"the snapshot's {len(providers)} providers is ({where}): every request will be refused; "
        "is the node's --site its node group's?"
    )


def static_row(
    priced: PricedModel, candidates: Sequence[Candidate], constraints: Constraints, node: NodeContext
) -> Row:
    """``priced`` (whose deployments are ``candidates``) with the request-independent
    checks done: what passes, and what is dropped and why."""
    ok: list[Candidate] = []
    drops: list[tuple[str, str]] = []
    for candidate in candidates:
        why = deployment_drop(candidate.provider, constraints, node)
        if why:
            drops.append((candidate.label, why))
        else:
            ok.append(candidate)
    m = priced.model
    passing = tuple(ok)
    cumulative = cumulative_shares(passing)
    return (
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


def cumulative_shares(candidates: Sequence[Candidate]) -> tuple[float, ...] | None:
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


class RowSet:
    """A rule's rows with what lets most requests skip the per-row checks: the
    capabilities every row has, the smallest context window, the least
    certification, and the static drops of all rows together."""

    __slots__ = (
        "_narrowed",
        "common_caps",
        "drops",
        "least_certified",
        "need_drops",
        "plain",
        "rows",
        "smallest_window",
        "unlimited_window",
        "usable",
    )

    def __init__(self, rows: tuple[Row, ...], need_drops: tuple[tuple[str, str], ...] = ()) -> None:
        self.rows = rows
        self.need_drops = need_drops
        """Drops made when narrowing to a request's needs (capability, certification)."""
        self._narrowed: dict[tuple[frozenset[Capability], int], RowSet] = {}
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
        self.plain: tuple[Survivor, ...] = tuple(r[10] for r in usable)
        """``usable`` as survivors of a request nothing can drop, when cost does not matter."""

    def narrow(self, capabilities: frozenset[Capability], certified_for: int) -> RowSet:
        """The rows having ``capabilities`` and certified for ``certified_for`` (0: no need).

        Cached by value: requests come with few distinct needs, so the per-row
        checks and the reasons' text are made once per need, not once per request.
        """
        key = (capabilities, certified_for)
        found = self._narrowed.get(key)
        if found is not None:
            return found
        kept: list[Row] = []
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
        found = self._narrowed[key] = RowSet(tuple(kept), tuple(drops))
        return found


@dataclass(frozen=True, slots=True)
class RuleRoutes:
    """One rule with its rows prepared."""

    rule: CompiledRule
    rows: RowSet
    fallbacks: RowSet | None
    shadow: RowSet | None
    """The shadow model's row under the rule's constraints, when the rule mirrors."""


@dataclass(frozen=True, slots=True)
class PolicyRoutes:
    """One tenant's policy with every rule's routes prepared."""

    policy: CompiledPolicy
    rules: tuple[RuleRoutes, ...]
    """Parallel to ``policy.rules``: first match wins."""
    default: RuleRoutes
    """The route when no rule matches: the policy's default route (its default
    model, then its other allowed models by name)."""


@dataclass(frozen=True, slots=True)
class RouteTable:
    """The routes of one snapshot on one node; built by ``build_route_table``."""

    config: RuntimeConfig
    node: NodeContext
    policies: Mapping[str, PolicyRoutes]
    """Keyed by tenant id; ``""`` is the platform default."""
    candidates: Mapping[str, tuple[Candidate, ...]]
    """Every model's deployments as candidates, keyed by model alias."""
    priced: Mapping[str, PricedModel]
    """Every model of the registry, priced."""
    named: dict[tuple[int, str], ExplicitRoutes] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )
    """``explicit``'s cache: (id of the policy, model alias) -> its routes. Not an argument: a
    table made from another (``dataclasses.replace``) starts with its own."""

    def routes_for(self, tenant_id: str) -> PolicyRoutes | None:
        """The tenant's own policy, else the platform default; None if neither exists."""
        return self.policies.get(tenant_id) or self.policies.get("")

    def explicit(self, policy: CompiledPolicy, model: ModelConfig) -> ExplicitRoutes:
        """The routes of a model a caller names under ``policy``: its one-row set under the
        policy's constraints, built on the first request that names it (the table holds
        ``MAX_NAMED`` of them; past that, it starts afresh)."""
        key = (id(policy), model.alias)
        found = self.named.get(key)
        if found is not None and found.policy is policy:
            return found
        rows = RowSet(
            (
                static_row(
                    self.priced[model.alias], self.candidates[model.alias], policy.constraints, self.node
                ),
            )
        )
        found = ExplicitRoutes(policy, rows)
        if len(self.named) >= MAX_NAMED:
            self.named.clear()  # one step, safe beside a reader in another thread
        self.named[key] = found
        return found


MAX_NAMED = 4096
"""Explicit routes (policy, model) a table keeps ready; requests name few."""


class ExplicitRoutes:
    """A named model's row under one policy, and the plans made of it that depend on nothing
    but the request's needs (``planner._explicit`` says when a plan may be reused)."""

    __slots__ = ("plans", "policy", "rows")

    def __init__(self, policy: CompiledPolicy, rows: RowSet) -> None:
        self.policy = policy
        """Held so the key's ``id`` cannot be taken by another policy while the entry lives."""
        self.rows = rows
        self.plans: dict[tuple[frozenset[Capability], DataClass], tuple[int, RoutePlan]] = {}
        """(capabilities, data class) -> (the largest window the plan was checked to fit, 0
        for none; the plan)."""


def build_route_table(
    config: RuntimeConfig, node: NodeContext = CLOUD_NODE, tenants: Iterable[str] | None = None
) -> RouteTable:
    """Prepare every policy's routes for ``node``; only ``tenants`` (and the platform
    default) when given, as a dry run for one tenant needs.

    Rows are shared between rules whose model and constraints are equal, so ten
    thousand policies written from a few templates cost a few rows per model.
    """
    providers = config.providers
    candidates = {
        alias: tuple(Candidate(m, d, providers[d.provider_id]) for d in m.deployments)
        for alias, m in config.models.items()
    }
    builder = _Builder(config, node, candidates)
    wanted = config.policies.keys() if tenants is None else {*tenants, ""} & config.policies.keys()
    policies = {tenant_id: builder.policy(config.policies[tenant_id]) for tenant_id in wanted}
    return RouteTable(config, node, policies, candidates, builder.priced)


class _Builder:
    """Shares rows and default routes while one table is built."""

    def __init__(
        self, config: RuntimeConfig, node: NodeContext, candidates: Mapping[str, tuple[Candidate, ...]]
    ) -> None:
        self.config = config
        self.node = node
        self.candidates = candidates
        self.priced = {alias: PricedModel.of(m) for alias, m in config.models.items()}
        self._rows: dict[tuple[str, Constraints], Row] = {}
        self._defaults: dict[tuple[str | None, Constraints, RetrySettings], CompiledRule] = {}

    def policy(self, policy: CompiledPolicy) -> PolicyRoutes:
        default = policy.default_rule or self._empty_default(policy)
        return PolicyRoutes(policy, tuple(self.rule(r) for r in policy.rules), self.rule(default))

    def rule(self, rule: CompiledRule) -> RuleRoutes:
        c = rule.constraints
        return RuleRoutes(
            rule,
            RowSet(tuple(self.row(p, c) for p in rule.candidates)),
            RowSet(tuple(self.row(p, c) for p in rule.fallbacks)) if rule.fallbacks else None,
            RowSet((self.row(rule.shadow.model, c),)) if rule.shadow is not None else None,
        )

    def row(self, priced: PricedModel, constraints: Constraints) -> Row:
        alias = priced.model.alias
        key = (alias, constraints)
        found = self._rows.get(key)
        if found is None:
            found = self._rows[key] = static_row(priced, self.candidates[alias], constraints, self.node)
        return found

    def _empty_default(self, policy: CompiledPolicy) -> CompiledRule:
        # Only a hand-built policy lacks a default route (the compiler always makes
        # one from allowed_models): it allows nothing, never the whole registry.
        key = (None, policy.constraints, policy.retry)
        found = self._defaults.get(key)
        if found is None:
            found = self._defaults[key] = CompiledRule(
                "default",
                MATCH_ALL,
                Strategy.PRIORITY,
                (),
                constraints=policy.constraints,
                retry=policy.retry,
            )
        return found
