"""Compiling policy documents into the frozen ``CompiledPolicy`` a node routes with.

Hand-written rather than schema-driven so that 10,000 policies compile in well
under a second; ``language.validate_document`` runs the schema itself at apply
time, and the tests check both agree on what they reject. The compiled form
pre-resolves candidate models, prices and cumulative weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeVar

from dataplane.config.model import (
    DEFAULT_CONSTRAINTS,
    DEFAULT_RETRY,
    MATCH_ALL,
    Capability,
    CompiledPolicy,
    CompiledRule,
    Constraints,
    DataClass,
    Match,
    ModelConfig,
    PricedModel,
    RetrySettings,
    Shadow,
    Strategy,
)
from dataplane.errors import PolicyError
from dataplane.policy.language import (
    CAPABILITY_NAMES,
    CONSTRAINT_FIELDS,
    DATA_CLASS_NAMES,
    FALLBACK_KINDS,
    HEDGE_AFTER_MS_MAX,
    HEDGE_FIELDS,
    HEDGE_MAX_EXTRA_MAX,
    MATCH_FIELDS,
    RETRY_FIELDS,
    RULE_FIELDS,
    SELECT_FIELDS,
    SHADOW_FIELDS,
    STICKY_KEYS,
    STICKY_PREFIXES,
    STRATEGY_NAMES,
    TOP_FIELDS,
)

_V = TypeVar("_V")

INT64_MAX = 2**63 - 1
MAX_COST_USD = INT64_MAX // 1_000_000_000
"""The largest ``max_cost_usd``: its nanos fit an int64 (about 9.2 billion USD per request)."""


class ModelIndex:
    """Models of one registry, indexed for ``select`` and with prices precomputed.

    Build one per snapshot and pass it to every ``compile_policy`` call: then
    selecting by capability costs a set intersection instead of a registry scan.
    """

    __slots__ = ("_attr", "_by_cap", "_interned", "_priced", "_selected", "models", "size")

    def __init__(self, models: Mapping[str, ModelConfig]) -> None:
        self.models = models
        self.size = len(models)
        # Every model priced up front: a thousand small objects, shared by every policy.
        self._priced: dict[str, PricedModel] = {alias: PricedModel.of(m) for alias, m in models.items()}
        self._by_cap: dict[Capability, set[str]] | None = None
        self._attr: dict[tuple[str, str], set[str]] | None = None
        self._selected: dict[tuple[object, ...], tuple[str, ...]] = {}
        # Seeded with the defaults so that, e.g., every empty match *is* MATCH_ALL.
        self._interned: dict[object, object] = {v: v for v in (MATCH_ALL, DEFAULT_CONSTRAINTS, DEFAULT_RETRY)}

    def intern(self, value: _V) -> _V:
        """One object per distinct value. The router memoises per constraints
        object, so tenants with equal constraints share that work; and ten
        thousand policies written from a few templates keep a few objects alive
        instead of ten thousand (less memory, and less for the GC to walk)."""
        found: _V = self._interned.setdefault(value, value)  # type: ignore[assignment]
        return found

    def priced(self, alias: str) -> PricedModel:
        return self._priced[alias]

    @property
    def by_alias(self) -> Mapping[str, PricedModel]:
        """Every model of the registry, priced."""
        return self._priced

    def select(
        self, capabilities: frozenset[Capability], attributes: tuple[tuple[str, frozenset[str]], ...]
    ) -> tuple[str, ...]:
        """Aliases (sorted) having every capability and, per attribute, one of the values."""
        key = (capabilities, attributes)
        found = self._selected.get(key)
        if found is not None:
            return found
        if self._by_cap is None or self._attr is None:
            by_cap: dict[Capability, set[str]] = {}
            attr: dict[tuple[str, str], set[str]] = {}
            for alias, m in self.models.items():
                for c in m.capabilities:
                    by_cap.setdefault(c, set()).add(alias)
                for k, v in m.attributes.items():
                    attr.setdefault((k, v), set()).add(alias)
            self._by_cap, self._attr = by_cap, attr
        result: set[str] = set(self.models)
        for c in capabilities:
            result &= self._by_cap.get(c, set())
        for k, values in attributes:
            union: set[str] = set()
            for v in values:
                union |= self._attr.get((k, v), set())
            result &= union
        found = self._selected[key] = tuple(sorted(result))
        return found


def compile_policy(
    document: Mapping[str, Any],
    models: Mapping[str, ModelConfig],
    *,
    policy_id: str,
    tenant_id: str,
    version: int,
    index: ModelIndex | None = None,
) -> CompiledPolicy:
    """Check ``document`` against the model registry and compile it.

    Raises ``PolicyError`` naming the JSON path of the first problem: unknown
    fields, wrong types, unknown models, bad weights. Pass one ``index`` built
    from ``models`` when compiling many policies against the same registry.
    """
    if index is None or index.models is not models:
        index = ModelIndex(models)
    doc = _obj(document, "$", TOP_FIELDS)
    allowed: frozenset[str] | None = None
    if "allowed_models" in doc:
        allowed = frozenset(_aliases(doc["allowed_models"], "$.allowed_models", models, None))
        if not allowed:
            # Nothing to route to: refused here rather than failing every request.
            raise PolicyError("$.allowed_models", "must name at least one model")
    default = doc.get("default_model")
    if default is not None:
        if not isinstance(default, str):
            raise PolicyError("$.default_model", "must be a model alias")
        if default not in models:
            raise PolicyError("$.default_model", f"unknown model {default!r}")
        if allowed is not None and default not in allowed:
            raise PolicyError("$.default_model", f"{default!r} is not in allowed_models")
    if allowed is None:
        # Visibility is explicit: a policy may use only the models it names. Without
        # allowed_models that is its default model alone, never the whole registry
        # (other tenants' models included).
        if default is None:
            raise PolicyError(
                "$.allowed_models",
                "required when there is no default_model (a policy names the models it may use)",
            )
        allowed = frozenset((default,))
    constraints = index.intern(_constraints(doc.get("constraints"), "$.constraints", DEFAULT_CONSTRAINTS))
    retry = index.intern(_retry(doc.get("retry"), "$.retry", DEFAULT_RETRY))
    rules: list[CompiledRule] = []
    raw_rules = doc.get("rules", [])
    if not isinstance(raw_rules, list):
        raise PolicyError("$.rules", "must be a list of rules")
    names: set[str] = set()
    for i, raw in enumerate(raw_rules):
        rule = _rule(raw, f"$.rules[{i}]", i, index, allowed, constraints, retry)
        if rule.name in names:
            raise PolicyError(f"$.rules[{i}].name", f"duplicate rule name {rule.name!r}")
        names.add(rule.name)
        rules.append(rule)
    # The default route: the default model, then the other allowed models by name.
    order = sorted(allowed)
    if default is not None:
        order.remove(default)
        order.insert(0, default)
    default_rule = CompiledRule(
        "default",
        MATCH_ALL,
        Strategy.PRIORITY,
        tuple(map(index.by_alias.__getitem__, order)),
        constraints=constraints,
        retry=retry,
        considered=tuple(order),
    )
    return CompiledPolicy(
        policy_id,
        tenant_id,
        version,
        default,
        allowed,
        tuple(rules),
        default_rule,
        constraints,
        retry,
    )


def _rule(
    raw: Any,
    path: str,
    position: int,
    index: ModelIndex,
    allowed: frozenset[str] | None,
    base_constraints: Constraints,
    base_retry: RetrySettings,
) -> CompiledRule:
    doc = _obj(raw, path, RULE_FIELDS)
    models = index.models
    name = doc.get("name", f"rules[{position}]")
    if not isinstance(name, str) or not name:
        raise PolicyError(f"{path}.name", "must be a non-empty string")
    if "description" in doc and not isinstance(doc["description"], str):
        raise PolicyError(f"{path}.description", "must be a string")
    match = index.intern(_match(doc.get("match"), f"{path}.match"))
    strategy_raw = doc.get("strategy", "priority")
    strategy = STRATEGY_NAMES.get(strategy_raw) if isinstance(strategy_raw, str) else None
    if strategy is None:
        raise PolicyError(f"{path}.strategy", f"must be one of {', '.join(STRATEGY_NAMES)}")

    named: list[str] = []
    if "models" in doc:
        named = _aliases(doc["models"], f"{path}.models", models, allowed)
    weights: dict[str, float] = {}
    if "weights" in doc:
        if strategy is not Strategy.WEIGHTED:
            raise PolicyError(f"{path}.weights", "only a weighted rule has weights")
        weights = _weights(doc["weights"], f"{path}.weights", models, allowed)
        if named:
            for alias in weights:
                if alias not in named:
                    raise PolicyError(f"{path}.weights.{alias}", f"{alias!r} is not in this rule's models")
            for i, alias in enumerate(named):
                if alias not in weights:
                    raise PolicyError(f"{path}.models[{i}]", f"{alias!r} has no weight")
        else:
            named = list(weights)
    elif strategy is Strategy.WEIGHTED:
        raise PolicyError(f"{path}.weights", "a weighted rule needs weights")

    if "select" in doc:
        if strategy is Strategy.WEIGHTED:
            raise PolicyError(f"{path}.select", "a weighted rule names its arms in weights")
        sel = _obj(doc["select"], f"{path}.select", SELECT_FIELDS)
        caps = _capabilities(sel.get("capabilities", []), f"{path}.select.capabilities")
        attrs = _string_map(sel.get("attributes", {}), f"{path}.select.attributes")
        for alias in index.select(caps, attrs):
            if (allowed is None or alias in allowed) and alias not in named:
                named.append(alias)
    elif not named:
        raise PolicyError(path, "a rule needs models, weights or select")
    if not named:
        # Compiles, but the rule can never route: say so now rather than at request time.
        raise PolicyError(f"{path}.select", "selects no model (allowed by this policy) in the registry")

    fallbacks: list[str] = []
    if "fallbacks" in doc:
        fallbacks = _aliases(doc["fallbacks"], f"{path}.fallbacks", models, allowed)
        for i, alias in enumerate(fallbacks):
            if alias in named:
                raise PolicyError(f"{path}.fallbacks[{i}]", f"{alias!r} is already a candidate of this rule")

    cumulative: tuple[float, ...] = ()
    if strategy is Strategy.WEIGHTED:
        total = sum(weights.values())
        running = 0.0
        sums = []
        for alias in named:
            running += weights[alias]
            sums.append(running / total)
        sums[-1] = 1.0  # no arm may be unreachable through rounding
        cumulative = tuple(sums)

    sticky = doc.get("sticky_key", "")
    if sticky:
        _sticky(sticky, f"{path}.sticky_key")
    shadow: Shadow | None = None
    if "shadow" in doc:
        shadow = _shadow(doc["shadow"], f"{path}.shadow", index, allowed)

    return CompiledRule(
        name,
        match,
        strategy,
        tuple(map(index.by_alias.__getitem__, named)),
        tuple(map(index.by_alias.__getitem__, fallbacks)),
        cumulative,
        sticky,
        shadow,
        # base_constraints is interned already; only a rule's own need interning.
        index.intern(_constraints(raw_constraints, f"{path}.constraints", base_constraints))
        if (raw_constraints := doc.get("constraints")) is not None
        else base_constraints,
        index.intern(_retry(raw_retry, f"{path}.retry", base_retry))
        if (raw_retry := doc.get("retry")) is not None
        else base_retry,
        (*named, *fallbacks),
    )


def _match(raw: Any, path: str) -> Match:
    if raw is None:
        return MATCH_ALL
    doc = _obj(raw, path, MATCH_FIELDS)
    data_classes: frozenset[DataClass] | None = None
    if "data_classification" in doc:
        names = _strings(doc["data_classification"], f"{path}.data_classification")
        classes = []
        for i, n in enumerate(names):
            if n not in DATA_CLASS_NAMES:
                raise PolicyError(
                    f"{path}.data_classification[{i}]",
                    f"unknown data classification {n!r} (known: {', '.join(DATA_CLASS_NAMES)})",
                )
            classes.append(DATA_CLASS_NAMES[n])
        data_classes = frozenset(classes)

    def opt(key: str) -> frozenset[str] | None:
        return frozenset(_strings(doc[key], f"{path}.{key}")) if key in doc else None

    return Match(
        tiers=opt("tiers"),
        tasks=opt("tasks"),
        metadata=_string_map(doc.get("metadata", {}), f"{path}.metadata"),
        capabilities=_capabilities(doc.get("capabilities", []), f"{path}.capabilities"),
        data_classes=data_classes,
        regions=opt("regions"),
        jurisdictions=opt("jurisdictions"),
    )


def _constraints(raw: Any, path: str, base: Constraints) -> Constraints:
    """Fields given here override ``base`` (the policy's, for a rule's constraints)."""
    if raw is None:
        return base
    doc = _obj(raw, path, CONSTRAINT_FIELDS)
    max_cost = base.max_cost_nanos
    if "max_cost_usd" in doc:
        usd = doc["max_cost_usd"]
        # Bounded so the nanos fit an int64: 1e308 USD once became inf nanos, and round()
        # raised OverflowError instead of a PolicyError (INTERNAL on the control plane).
        if not _is_number(usd) or not 0 <= usd <= MAX_COST_USD:
            raise PolicyError(f"{path}.max_cost_usd", f"must be a number from 0 to {MAX_COST_USD}")
        max_cost = min(round(usd * 1_000_000_000), INT64_MAX)
    max_latency = base.max_latency_ms
    if "max_latency_ms" in doc:
        max_latency = _int(doc["max_latency_ms"], f"{path}.max_latency_ms", minimum=1)
    regions = base.regions
    if "regions" in doc:
        regions = frozenset(_strings(doc["regions"], f"{path}.regions"))
    jurisdictions = base.jurisdictions
    if "jurisdictions" in doc:
        jurisdictions = frozenset(_strings(doc["jurisdictions"], f"{path}.jurisdictions"))
    egress = base.allow_egress
    if "allow_egress" in doc:
        egress = doc["allow_egress"]
        if not isinstance(egress, bool):
            raise PolicyError(f"{path}.allow_egress", "must be true or false")
    certify = base.certification_required_from
    if "certification_required_from" in doc:
        value = doc["certification_required_from"]
        if value == "never":
            certify = None
        elif isinstance(value, str) and value in DATA_CLASS_NAMES and value != "unspecified":
            certify = DATA_CLASS_NAMES[value]
        else:
            raise PolicyError(
                f"{path}.certification_required_from",
                "must be one of public, internal, confidential, restricted, never",
            )
    return Constraints(max_cost, max_latency, regions, jurisdictions, egress, certify)


def _retry(raw: Any, path: str, base: RetrySettings) -> RetrySettings:
    if raw is None:
        return base
    doc = _obj(raw, path, RETRY_FIELDS)
    max_attempts = base.max_attempts
    if "max_attempts" in doc:
        max_attempts = _int(doc["max_attempts"], f"{path}.max_attempts", minimum=1, maximum=20)
    per = base.attempts_per_deployment
    if "attempts_per_deployment" in doc:
        per = _int(doc["attempts_per_deployment"], f"{path}.attempts_per_deployment", minimum=1, maximum=10)
    base_ms = base.backoff_base_ms
    if "backoff_base_ms" in doc:
        base_ms = _int(doc["backoff_base_ms"], f"{path}.backoff_base_ms", minimum=0, maximum=60_000)
    cap_ms = base.backoff_cap_ms
    if "backoff_cap_ms" in doc:
        cap_ms = _int(doc["backoff_cap_ms"], f"{path}.backoff_cap_ms", minimum=0, maximum=300_000)
    if cap_ms < base_ms:
        raise PolicyError(f"{path}.backoff_cap_ms", "must be at least backoff_base_ms")
    fallback_on = base.fallback_on
    if "fallback_on" in doc:
        kinds = _strings(doc["fallback_on"], f"{path}.fallback_on")
        for i, kind in enumerate(kinds):
            if kind not in FALLBACK_KINDS:
                raise PolicyError(
                    f"{path}.fallback_on[{i}]",
                    f"unknown error kind {kind!r} (known: {', '.join(sorted(FALLBACK_KINDS))})",
                )
        fallback_on = frozenset(kinds)
    after_ms, extra = base.hedge_after_ms, base.hedge_max_extra
    if "hedge" in doc:
        hedge = _obj(doc["hedge"], f"{path}.hedge", HEDGE_FIELDS)
        if "after_ms" not in hedge:
            raise PolicyError(f"{path}.hedge.after_ms", "required")
        after_ms = _int(hedge["after_ms"], f"{path}.hedge.after_ms", minimum=1, maximum=HEDGE_AFTER_MS_MAX)
        extra = 1
        if "max_extra" in hedge:
            extra = _int(
                hedge["max_extra"], f"{path}.hedge.max_extra", minimum=0, maximum=HEDGE_MAX_EXTRA_MAX
            )
        if extra == 0:
            after_ms = 0
    if extra and max_attempts <= 1:
        # Every hedge is an attempt: with one attempt in all, the hedge could never start.
        at = f"{path}.hedge" if "hedge" in doc else f"{path}.max_attempts"
        raise PolicyError(at, "hedging needs max_attempts of at least 2")
    return RetrySettings(max_attempts, per, base_ms, cap_ms, fallback_on, after_ms, extra)


def _shadow(raw: Any, path: str, index: ModelIndex, allowed: frozenset[str] | None) -> Shadow:
    doc = _obj(raw, path, SHADOW_FIELDS)
    if "model" not in doc:
        raise PolicyError(f"{path}.model", "required")
    alias = doc["model"]
    if not isinstance(alias, str):
        raise PolicyError(f"{path}.model", "must be a model alias")
    _check_alias(alias, f"{path}.model", index.models, allowed)
    share = doc.get("share", 1.0)
    if not _is_number(share) or not 0.0 <= share <= 1.0:
        raise PolicyError(f"{path}.share", "must be a number between 0 and 1")
    key = doc.get("key", "")
    if key:
        _sticky(key, f"{path}.key")
    return Shadow(index.priced(alias), float(share), key)


def _weights(
    raw: Any, path: str, models: Mapping[str, ModelConfig], allowed: frozenset[str] | None
) -> dict[str, float]:
    if not isinstance(raw, Mapping) or not raw:
        raise PolicyError(path, "must be a non-empty object of model alias to weight")
    weights: dict[str, float] = {}
    for alias, weight in raw.items():
        at = f"{path}.{alias}"
        _check_alias(alias, at, models, allowed)
        if not _is_number(weight) or weight < 0 or not math.isfinite(weight):
            raise PolicyError(at, "weight must be a finite number >= 0")
        weights[alias] = float(weight)
    if sum(weights.values()) <= 0:
        raise PolicyError(path, "weights must not all be zero")
    return weights


def _sticky(key: Any, path: str) -> None:
    if not isinstance(key, str) or not (
        key in STICKY_KEYS
        or (key.isprintable() and any(key.startswith(p) and len(key) > len(p) for p in STICKY_PREFIXES))
    ):
        raise PolicyError(path, "must be tenant.id, request_id, metadata.<key> or tenant.labels.<key>")


def _aliases(
    raw: Any, path: str, models: Mapping[str, ModelConfig], allowed: frozenset[str] | None
) -> list[str]:
    if type(raw) is not list:
        raise PolicyError(path, "must be a list of model aliases")
    # The common case checked in bulk (set operations run in C); element by
    # element only to name the bad one.
    try:
        unique = set(raw)
    except TypeError:
        unique = set()
    if len(unique) == len(raw) and models.keys() >= unique and (allowed is None or allowed >= unique):
        return raw
    seen: set[str] = set()
    for i, alias in enumerate(raw):
        if not isinstance(alias, str):
            raise PolicyError(f"{path}[{i}]", "must be a model alias")
        _check_alias(alias, f"{path}[{i}]", models, allowed)
        if alias in seen:
            raise PolicyError(f"{path}[{i}]", f"{alias!r} is listed twice")
        seen.add(alias)
    raise AssertionError("unreachable: the bulk check failed but no element did")


def _check_alias(
    alias: str, path: str, models: Mapping[str, ModelConfig], allowed: frozenset[str] | None
) -> None:
    if alias not in models:
        raise PolicyError(path, f"unknown model {alias!r}")
    if allowed is not None and alias not in allowed:
        raise PolicyError(path, f"{alias!r} is not in allowed_models")


def _capabilities(raw: Any, path: str) -> frozenset[Capability]:
    names = _strings(raw, path)
    caps = []
    for i, n in enumerate(names):
        cap = CAPABILITY_NAMES.get(n)
        if cap is None:
            raise PolicyError(
                f"{path}[{i}]", f"unknown capability {n!r} (known: {', '.join(CAPABILITY_NAMES)})"
            )
        caps.append(cap)
    return frozenset(caps)


def _obj(raw: Any, path: str, known: frozenset[str]) -> Mapping[str, Any]:
    # type() before isinstance(): documents are plain dicts, and an ABC check
    # per object is a measurable share of compiling 10,000 policies.
    if type(raw) is not dict and not isinstance(raw, Mapping):
        raise PolicyError(path, "must be an object")
    if not known.issuperset(raw):
        for key in raw:
            if key not in known:
                raise PolicyError(f"{path}.{key}", "unknown field")
    return raw


def _strings(raw: Any, path: str) -> list[str]:
    if not isinstance(raw, list):
        raise PolicyError(path, "must be a list of strings")
    for i, s in enumerate(raw):
        if not isinstance(s, str) or not s:
            raise PolicyError(f"{path}[{i}]", "must be a non-empty string")
    return raw


def _string_map(raw: Any, path: str) -> tuple[tuple[str, frozenset[str]], ...]:
    """``{key: value | [values]}`` as sorted (key, values) pairs."""
    if not isinstance(raw, Mapping):
        raise PolicyError(path, "must be an object of strings")
    out = []
    for key, value in raw.items():
        if isinstance(value, str):
            out.append((key, frozenset((value,))))
        else:
            out.append((key, frozenset(_strings(value, f"{path}.{key}"))))
    return tuple(sorted(out, key=lambda kv: kv[0]))


def _int(raw: Any, path: str, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise PolicyError(path, "must be an integer")
    if raw < minimum or (maximum is not None and raw > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise PolicyError(path, f"must be {bound}")
    return raw


def _is_number(raw: Any) -> bool:
    return isinstance(raw, int | float) and not isinstance(raw, bool)
