"""plan_route: rule matching, strategies, constraints, node modes, health, explanations."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

import pytest

from dataplane.config.model import (
    Capability,
    DataClass,
    DeploymentMode,
    ProviderLocation,
    RuntimeConfig,
    TenantConfig,
)
from dataplane.errors import (
    CapabilityUnavailable,
    InvalidRequest,
    NoEligibleCandidate,
    NotFound,
    PermissionDenied,
)
from dataplane.routing.dispatch import Dispatcher
from dataplane.routing.health import BreakerSettings
from dataplane.routing.planner import plan_route, usable_plan
from dataplane.routing.query import NodeContext, RouteQuery
from dataplane.routing.table import build_route_table

from .support import FakeClock, model, provider, runtime

GOLD = TenantConfig("t-gold", "Gold", tier="gold", labels={"region": "eu-west-1", "jurisdiction": "EU"})
FREE = TenantConfig("t-free", "Free", tier="free")

PROVIDERS = [
    provider("eu", region="eu-west-1", jurisdiction="EU"),
    provider("us", region="us-east-1", jurisdiction="US"),
    provider("onprem", location=ProviderLocation.ON_PREM, region="dc1", jurisdiction="EU"),
    provider("site-a", location=ProviderLocation.SITE, site="a", region="a", jurisdiction="EU"),
    provider("site-b", location=ProviderLocation.SITE, site="b", region="b", jurisdiction="EU"),
]

# Prices in nano-USD per million tokens: "cheap-in" is cheap for long prompts,
# "cheap-out" for long answers.
MODELS = [
    model("sim-fast", ("fast-eu", "eu"), ("fast-us", "us"), typical_latency_ms=300),
    model(
        "sim-smart",
        ("smart-eu", "eu"),
        capabilities={Capability.CHAT, Capability.TOOLS},
        typical_latency_ms=900,
    ),
    model(
        "gpt-4o",
        ("gpt-us", "us"),
        capabilities={Capability.CHAT, Capability.TOOLS, Capability.VISION},
        certified_for={DataClass.CONFIDENTIAL},
    ),
    model("cheap-in", ("in-eu", "eu"), input_price=100_000_000, output_price=20_000_000_000),
    model("cheap-out", ("out-eu", "eu"), input_price=5_000_000_000, output_price=500_000_000),
    model("small", ("small-eu", "eu"), context_window=8_000),
    model(
        "local",
        ("local-dc", "onprem"),
        ("local-a", "site-a"),
        ("local-b", "site-b"),
        certified_for={DataClass.RESTRICTED},
    ),
    model("balanced", ("bal-1", "eu", 3), ("bal-2", "us", 1)),
    model("no-window", ("nw-eu", "eu"), context_window=0),
]


ALL = [m.alias for m in MODELS]


def config(
    policy: dict[str, Any], *, default: dict[str, Any] | None = None, whole_registry: bool = True
) -> RuntimeConfig:
    """The registry with ``policy`` for GOLD. Visibility is explicit (a policy without
    ``allowed_models`` may use its default model only), so unless ``whole_registry`` is
    False the tests of rules and strategies allow every model of the registry explicitly."""
    if whole_registry and "allowed_models" not in policy:
        policy = {**policy, "allowed_models": ALL}
    policies = {GOLD.id: policy}
    if default is not None:
        policies[""] = default
    return runtime(MODELS, PROVIDERS, policies, [GOLD, FREE])


def plan(cfg: RuntimeConfig, **query: Any) -> Any:
    node = query.pop("node", NodeContext())
    health = query.pop("health", None)
    query.setdefault("tenant", GOLD)
    only = query.pop("only", None)
    return plan_route(build_route_table(cfg, node, only), RouteQuery(**query), health)


def labels(p: Any) -> list[str]:
    return [c.key for c in p.ordered]


# ---- the default route (the demo policy) ----


def test_default_model_first_then_allowed_models() -> None:
    cfg = config({"default_model": "sim-smart", "allowed_models": ["sim-fast", "sim-smart"]})
    p = plan(cfg, request_id="r1")
    assert p.rule == "default"
    assert p.strategy == "priority"
    assert [c.model.alias for c in p.ordered][:1] == ["sim-smart"]
    assert {c.model.alias for c in p.ordered} == {"sim-fast", "sim-smart"}
    assert "policy default" in p.reason


def test_platform_default_policy_serves_tenants_without_their_own() -> None:
    cfg = config({"default_model": "sim-smart"}, default={"default_model": "sim-fast"})
    assert plan(cfg, tenant=FREE).ordered[0].model.alias == "sim-fast"


def test_a_policy_without_allowed_models_may_use_only_its_default_model() -> None:
    cfg = config({"default_model": "sim-smart"}, whole_registry=False)
    p = plan(cfg)
    assert p.considered == ("sim-smart",)
    assert [c.model.alias for c in p.ordered] == ["sim-smart"]
    # Another model of the registry is, to this tenant, unknown.
    with pytest.raises(NotFound, match="model: unknown model 'gpt-4o'"):
        plan(cfg, model="gpt-4o")
    # Needing what the default model lacks finds nothing else in the registry.
    with pytest.raises(CapabilityUnavailable):
        plan(cfg, capabilities=frozenset({Capability.VISION}))


def test_the_whole_registry_is_reached_only_by_listing_it() -> None:
    cfg = config({"default_model": "sim-smart"})
    p = plan(cfg)
    assert p.considered[0] == "sim-smart"
    assert sorted(p.considered) == sorted(ALL)
    assert plan(cfg, capabilities=frozenset({Capability.VISION})).chosen.model.alias == "gpt-4o"


def test_a_table_for_one_tenant_decides_exactly_like_the_whole_one() -> None:
    # ExplainRoute builds routes for one tenant only; a node builds them all.
    policy = {"rules": [{"models": ["sim-fast", "local"], "constraints": {"regions": ["eu-west-1", "a"]}}]}
    cold = plan(config(policy), request_id="r")
    warm = plan(config(policy), request_id="r", only=[GOLD.id])
    assert labels(warm) == labels(cold)
    assert warm.dropped == cold.dropped


def test_no_policy_at_all_is_permission_denied() -> None:
    with pytest.raises(PermissionDenied):
        plan(config({"default_model": "sim-fast"}), tenant=FREE)


# ---- matching ----

RULES: dict[str, Any] = {
    "default_model": "sim-fast",
    "rules": [
        {"name": "by-tier", "match": {"tiers": ["platinum"]}, "models": ["gpt-4o"]},
        {"name": "by-task", "match": {"tasks": ["summarize"]}, "models": ["sim-smart"]},
        {"name": "by-metadata", "match": {"metadata": {"env": ["prod", "staging"]}}, "models": ["cheap-in"]},
        {"name": "by-capability", "match": {"capabilities": ["vision"]}, "models": ["gpt-4o"]},
        {"name": "by-class", "match": {"data_classification": ["restricted"]}, "models": ["local"]},
        {"name": "by-region", "match": {"regions": ["us-east-1"]}, "models": ["cheap-out"]},
        {"name": "by-jurisdiction", "match": {"jurisdictions": ["US"]}, "models": ["small"]},
    ],
}


@pytest.mark.parametrize(
    ("query", "rule"),
    [
        ({"tenant": replace(GOLD, tier="platinum")}, "by-tier"),
        ({"task": "summarize"}, "by-task"),
        ({"metadata": {"env": "staging"}}, "by-metadata"),
        ({"capabilities": frozenset({Capability.VISION})}, "by-capability"),
        ({"data_classification": DataClass.RESTRICTED}, "by-class"),
        ({"region": "us-east-1"}, "by-region"),
        ({"jurisdiction": "US"}, "by-jurisdiction"),
        ({"tenant": replace(GOLD, labels={"jurisdiction": "US"})}, "by-jurisdiction"),
        ({"metadata": {"env": "dev"}}, "default"),
    ],
)
def test_the_first_matching_rule_routes(query: dict[str, Any], rule: str) -> None:
    p = plan(config(RULES), **query)
    assert p.rule == rule


def test_every_field_of_a_match_must_hold() -> None:
    cfg = config(
        {
            "rules": [
                {"match": {"tiers": ["gold"], "tasks": ["chat"]}, "models": ["sim-smart"]},
                {"models": ["sim-fast"]},
            ]
        }
    )
    assert plan(cfg, task="chat").rule == "rules[0]"
    assert plan(cfg, task="code").rule == "rules[1]"
    assert plan(cfg, tenant=replace(GOLD, tier="free"), task="chat").rule == "rules[1]"


# ---- strategies ----


def test_priority_then_fallbacks_in_order() -> None:
    cfg = config({"rules": [{"models": ["sim-smart", "cheap-in"], "fallbacks": ["cheap-out"]}]})
    p = plan(cfg)
    assert [c.model.alias for c in p.ordered] == ["sim-smart", "cheap-in", "cheap-out"]
    assert p.considered == ("sim-smart", "cheap-in", "cheap-out")
    assert p.chosen.model.alias == "sim-smart"
    assert [c.model.alias for c in p.fallbacks] == ["cheap-in", "cheap-out"]


def test_cheapest_depends_on_the_request_shape() -> None:
    cfg = config({"rules": [{"models": ["cheap-in", "cheap-out"], "strategy": "cheapest"}]})
    long_prompt = plan(cfg, estimated_input_tokens=100_000, max_output_tokens=100)
    long_answer = plan(cfg, estimated_input_tokens=100, max_output_tokens=4000)
    assert [c.model.alias for c in long_prompt.ordered] == ["cheap-in", "cheap-out"]
    assert [c.model.alias for c in long_answer.ordered] == ["cheap-out", "cheap-in"]
    assert "cheapest" in long_prompt.reason


def test_cheapest_assumes_the_model_maximum_when_the_request_gives_none() -> None:
    # 10 input tokens, 4096 output tokens assumed: output price dominates.
    cfg = config({"rules": [{"models": ["cheap-in", "cheap-out"], "strategy": "cheapest"}]})
    assert plan(cfg, estimated_input_tokens=10).chosen.model.alias == "cheap-out"


def test_latency_uses_observed_averages_over_typical_figures(clock: FakeClock) -> None:
    cfg = config({"rules": [{"models": ["sim-smart", "sim-fast"], "strategy": "latency"}]})
    # Typical: sim-fast 300 ms, sim-smart 900 ms.
    assert plan(cfg).chosen.model.alias == "sim-fast"
    dispatcher = Dispatcher(clock=clock)
    smart = next(c for c in plan(cfg).ordered if c.model.alias == "sim-smart")
    dispatcher.state(smart).record_success(40.0)
    p = plan(cfg, health=dispatcher.health)
    assert p.chosen.model.alias == "sim-smart"
    assert "latency" in p.reason


def test_weighted_split_is_sticky_and_close_to_the_weights() -> None:
    cfg = config(
        {
            "rules": [
                {
                    "strategy": "weighted",
                    "weights": {"sim-smart": 90, "cheap-in": 10},
                    "sticky_key": "metadata.user_id",
                }
            ]
        }
    )
    arms: Counter[str] = Counter()
    for i in range(10_000):
        user = f"user-{i}"
        first = plan(cfg, metadata={"user_id": user}, request_id=f"a{i}")
        again = plan(cfg, metadata={"user_id": user}, request_id=f"b{i}")
        assert first.arm == again.arm, "one user must see one arm"
        assert first.chosen.model.alias == first.arm
        arms[first.arm] += 1
    assert arms["sim-smart"] / 10_000 == pytest.approx(0.9, abs=0.02)
    assert arms["cheap-in"] / 10_000 == pytest.approx(0.1, abs=0.02)


def test_weighted_split_without_the_key_spreads_by_request_id() -> None:
    cfg = config(
        {
            "rules": [
                {
                    "strategy": "weighted",
                    "weights": {"sim-smart": 1, "cheap-in": 1},
                    "sticky_key": "metadata.user_id",
                }
            ]
        }
    )
    arms = Counter(plan(cfg, request_id=f"r{i}").arm for i in range(2000))
    assert arms["sim-smart"] / 2000 == pytest.approx(0.5, abs=0.05)


def test_weighted_arm_dropped_by_a_constraint_gives_its_share_to_the_others() -> None:
    cfg = config(
        {
            "rules": [
                {
                    "strategy": "weighted",
                    "weights": {"small": 50, "sim-smart": 25, "cheap-in": 25},
                    "sticky_key": "metadata.user_id",
                }
            ]
        }
    )
    arms = Counter(
        plan(cfg, metadata={"user_id": f"u{i}"}, estimated_input_tokens=20_000).arm for i in range(4000)
    )
    assert "small" not in arms
    assert arms["sim-smart"] / 4000 == pytest.approx(0.5, abs=0.04)


def test_shadow_share_and_stickiness() -> None:
    cfg = config(
        {
            "rules": [
                {
                    "models": ["sim-smart"],
                    "sticky_key": "metadata.user_id",
                    "shadow": {"model": "cheap-in", "share": 0.05},
                }
            ]
        }
    )
    shadowed = 0
    for i in range(10_000):
        p = plan(cfg, metadata={"user_id": f"u{i}"})
        if p.shadow is not None:
            assert p.shadow.model.alias == "cheap-in"
            assert p.chosen.model.alias == "sim-smart", "the shadow never changes the served route"
            shadowed += 1
    assert shadowed / 10_000 == pytest.approx(0.05, abs=0.01)


def test_a_shadow_must_satisfy_the_same_constraints() -> None:
    # Mirroring confidential data to an uncertified model would leak it.
    cfg = config({"rules": [{"models": ["gpt-4o"], "shadow": {"model": "sim-smart", "share": 1.0}}]})
    assert plan(cfg).shadow is not None
    p = plan(cfg, data_classification=DataClass.CONFIDENTIAL)
    assert p.shadow is None
    assert ("sim-smart", "shadow: not certified for confidential data") in p.dropped


# ---- constraints ----


def test_max_cost_drops_expensive_models() -> None:
    # 100k input tokens at 5 USD/Mtok is 0.5 USD.
    cfg = config({"rules": [{"models": ["cheap-out", "cheap-in"], "constraints": {"max_cost_usd": 0.1}}]})
    p = plan(cfg, estimated_input_tokens=100_000, max_output_tokens=100)
    assert [c.model.alias for c in p.ordered] == ["cheap-in"]
    (dropped,) = p.dropped
    assert dropped[0] == "cheap-out"
    assert "estimated cost" in dropped[1]


def test_max_latency_drops_slow_deployments(clock: FakeClock) -> None:
    cfg = config({"rules": [{"models": ["sim-smart", "sim-fast"], "constraints": {"max_latency_ms": 500}}]})
    p = plan(cfg)
    assert [c.model.alias for c in p.ordered] == ["sim-fast", "sim-fast"]
    assert ("sim-smart@eu", "latency 900 ms > max 500 ms") in p.dropped
    # Observed latency wins over the typical figure.
    dispatcher = Dispatcher(clock=clock)
    fast_us = next(c for c in p.ordered if c.key == "fast-us")
    dispatcher.state(fast_us).record_success(2000.0)
    assert labels(plan(cfg, health=dispatcher.health)) == ["fast-eu"]


def test_context_window_must_fit_prompt_and_output() -> None:
    cfg = config({"rules": [{"models": ["small", "sim-fast"]}]})
    assert plan(cfg, estimated_input_tokens=7_000).chosen.model.alias == "small"
    p = plan(cfg, estimated_input_tokens=7_000, max_output_tokens=2_000)
    assert p.chosen.model.alias == "sim-fast"
    assert ("small", "context window 8000 < 9000 tokens needed") in p.dropped


def test_a_model_without_a_known_window_is_never_dropped_for_size() -> None:
    cfg = config({"rules": [{"models": ["small", "no-window"]}]})
    assert [c.model.alias for c in plan(cfg, estimated_input_tokens=100).ordered] == ["small", "no-window"]
    p = plan(cfg, estimated_input_tokens=1_000_000)
    assert [c.model.alias for c in p.ordered] == ["no-window"]
    assert [name for name, _ in p.dropped] == ["small"]


def test_certification_for_the_data_classification() -> None:
    cfg = config({"rules": [{"models": ["sim-smart", "gpt-4o"]}]})
    assert plan(cfg, data_classification=DataClass.PUBLIC).chosen.model.alias == "sim-smart"
    p = plan(cfg, data_classification=DataClass.INTERNAL)
    assert [c.model.alias for c in p.ordered] == ["gpt-4o"], "certified for confidential covers internal"
    with pytest.raises(NoEligibleCandidate):
        plan(cfg, data_classification=DataClass.RESTRICTED)
    relaxed = config(
        {"constraints": {"certification_required_from": "never"}, "rules": [{"models": ["sim-smart"]}]}
    )
    assert plan(relaxed, data_classification=DataClass.RESTRICTED).chosen.model.alias == "sim-smart"


def test_region_and_jurisdiction_allow_lists() -> None:
    cfg = config({"rules": [{"models": ["sim-fast"], "constraints": {"regions": ["eu-west-1"]}}]})
    p = plan(cfg)
    assert labels(p) == ["fast-eu"]
    assert ("sim-fast@us", "region 'us-east-1' not allowed") in p.dropped
    cfg = config({"constraints": {"jurisdictions": ["US"]}, "rules": [{"models": ["sim-fast"]}]})
    assert labels(plan(cfg)) == ["fast-us"]


def test_air_gapped_node_only_calls_its_own_site() -> None:
    cfg = config({"rules": [{"models": ["sim-fast", "local"]}]})
    p = plan(cfg, node=NodeContext(DeploymentMode.AIR_GAPPED, site="b"))
    assert labels(p) == ["local-b"]
    assert {name for name, _ in p.dropped} >= {"sim-fast@eu", "sim-fast@us", "local@onprem", "local@site-a"}


def test_on_prem_node_needs_the_policy_to_allow_egress() -> None:
    cfg = config({"rules": [{"models": ["sim-fast", "local"]}]})
    node = NodeContext(DeploymentMode.ON_PREM, site="a")
    p = plan(cfg, node=node)
    assert sorted(labels(p)) == ["local-a", "local-dc"]
    assert ("sim-fast@eu", "on-prem node: policy does not allow egress to public cloud") in p.dropped
    assert ("local@site-b", "on-prem node: site 'b' is not this node's") in p.dropped
    egress = config({"rules": [{"models": ["sim-fast", "local"], "constraints": {"allow_egress": True}}]})
    assert {c.model.alias for c in plan(egress, node=node).ordered} == {"sim-fast", "local"}


def test_a_changed_provider_is_seen_by_the_next_snapshot() -> None:
    # A new snapshot gets a new route table: nothing is carried over from the old one.
    policy = {"rules": [{"models": ["sim-fast"], "constraints": {"regions": ["eu-west-1"]}}]}
    cfg = config(policy)
    assert labels(plan(cfg)) == ["fast-eu"]
    moved = {**cfg.providers, "us": replace(cfg.providers["us"], region="eu-west-1")}
    assert labels(plan(replace(cfg, providers=moved), request_id="x")) in (
        ["fast-eu", "fast-us"],
        ["fast-us", "fast-eu"],
    )


# ---- deployments, health ----


def test_deployments_of_a_model_are_balanced_by_weight() -> None:
    cfg = config({"rules": [{"models": ["balanced"]}]})
    first = Counter(plan(cfg, request_id=f"req-{i}").chosen.key for i in range(8000))
    assert first["bal-1"] / 8000 == pytest.approx(0.75, abs=0.03)
    p = plan(cfg, request_id="req-1")
    assert sorted(labels(p)) == ["bal-1", "bal-2"], "the other deployment is the fallback"


def test_an_open_breaker_moves_a_deployment_to_the_back(clock: FakeClock) -> None:
    cfg = config({"rules": [{"models": ["sim-fast", "sim-smart"]}]})
    dispatcher = Dispatcher(clock=clock, breaker=BreakerSettings(failure_threshold=1, cooldown_s=10))
    fast_eu = next(c for c in plan(cfg).ordered if c.key == "fast-eu")
    dispatcher.state(fast_eu).record_failure()
    for i in range(20):
        p = plan(cfg, health=dispatcher.health, request_id=f"r{i}")
        assert p.ordered[-1].key == "fast-eu"
        assert p.deferred == (("sim-fast@eu", "circuit breaker open"),)
    # Half-open: back in its place so probes reach it.
    clock.advance(10)
    assert {plan(cfg, health=dispatcher.health, request_id=f"r{i}").chosen.key for i in range(40)} == {
        "fast-eu",
        "fast-us",
    }


# ---- refusals ----


def test_explicit_model_checks() -> None:
    cfg = config({"allowed_models": ["sim-fast", "sim-smart"]})
    assert plan(cfg, model="sim-smart").rule == "explicit"
    # A model that exists but is not allowed looks exactly like one that does not exist.
    with pytest.raises(NotFound) as unknown:
        plan(cfg, model="gpt-5")
    with pytest.raises(NotFound) as forbidden:
        plan(cfg, model="gpt-4o")
    assert str(unknown.value) == "model: unknown model 'gpt-5'"
    assert str(forbidden.value) == "model: unknown model 'gpt-4o'"
    assert type(unknown.value) is type(forbidden.value)
    with pytest.raises(CapabilityUnavailable) as caught:
        plan(cfg, model="sim-fast", capabilities=frozenset({Capability.TOOLS}))
    assert caught.value.capability == "tools"


def test_an_explicit_model_still_obeys_residency_and_the_node() -> None:
    cfg = config({"constraints": {"jurisdictions": ["EU"]}})
    assert labels(plan(cfg, model="sim-fast")) == ["fast-eu"]
    with pytest.raises(NoEligibleCandidate):
        plan(cfg, model="gpt-4o")


def test_missing_capability_is_named() -> None:
    cfg = config({"rules": [{"models": ["sim-fast", "sim-smart"]}]})
    with pytest.raises(CapabilityUnavailable) as caught:
        plan(cfg, capabilities=frozenset({Capability.VISION}))
    assert caught.value.capability == "vision"


def test_everything_dropped_names_the_reasons() -> None:
    cfg = config({"rules": [{"models": ["small"]}]})
    with pytest.raises(NoEligibleCandidate) as caught:
        plan(cfg, estimated_input_tokens=50_000)
    assert caught.value.dropped == (("small", "context window 8000 < 50000 tokens needed"),)
    assert "context window" in caught.value.message


def test_explain_is_plain_data_with_the_whole_decision() -> None:
    cfg = config(
        {
            "rules": [
                {
                    "name": "canary",
                    "strategy": "weighted",
                    "weights": {"sim-smart": 1, "small": 1},
                    "fallbacks": ["sim-fast"],
                    "shadow": {"model": "cheap-in", "share": 1},
                    "constraints": {"regions": ["eu-west-1"]},
                }
            ]
        }
    )
    explained = plan(cfg, request_id="r-1", metadata={}).explain()
    assert explained["rule"] == "canary"
    assert explained["strategy"] == "weighted"
    assert explained["policy_id"] == "pol-t-gold"
    assert explained["policy_version"] == 3
    assert explained["chosen"]["model"] == explained["arm"]
    assert explained["shadow"]["model"] == "cheap-in"
    assert {"candidate": "sim-fast@us", "why": "region 'us-east-1' not allowed"} in explained["dropped"]
    assert explained["considered"] == ["sim-smart", "small", "sim-fast"]
    assert explained["retry"]["max_attempts"] == 3


def test_a_plan_whose_candidates_all_fit_the_max_output_tokens_is_kept_as_it_is() -> None:
    cfg = config({"default_model": "sim-fast"})
    planned = plan(cfg, max_output_tokens=100)
    # Every candidate takes 100 output tokens: the same plan, not a copy made per request.
    assert usable_plan(planned, RouteQuery(tenant=GOLD, max_output_tokens=100)) is planned
    # One that none can take is refused, naming the field.
    with pytest.raises(InvalidRequest, match="above the maximum"):
        usable_plan(planned, RouteQuery(tenant=GOLD, max_output_tokens=10**9))
