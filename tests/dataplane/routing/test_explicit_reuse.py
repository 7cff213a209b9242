"""A named model's plan is reused only where it cannot differ from a fresh decision.

``plan_route`` keeps, per route table, the routes of each model a caller names and the
plans that depend on nothing but the request's needs. These tests hold a table that has
served a long mixed sequence of requests to the decisions a table built afresh makes
for each of them: the same plan or the same refusal, whatever came before.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import hypothesis
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.config.model import Capability, DataClass, DeploymentMode, ProviderLocation, TenantConfig
from dataplane.errors import SignalboxError
from dataplane.routing.dispatch import Dispatcher
from dataplane.routing.health import BreakerSettings
from dataplane.routing.planner import plan_route
from dataplane.routing.query import NodeContext, RouteQuery
from dataplane.routing.table import MAX_NAMED, build_route_table

from .support import CHAT as CHAT_STREAM
from .support import FakeClock, model, provider, runtime

TENANT = TenantConfig("t-a", "A", labels={"region": "eu-west-1", "jurisdiction": "EU"})
OTHER = TenantConfig("t-b", "B")
THIRD = TenantConfig("t-c", "C")

PROVIDERS = [
    provider("eu", region="eu-west-1", jurisdiction="EU"),
    provider("us", region="us-east-1", jurisdiction="US"),
    provider("onprem", location=ProviderLocation.ON_PREM, region="dc1", jurisdiction="EU"),
]
MODELS = [
    model("one", ("one-eu", "eu")),
    model("two", ("two-eu", "eu"), ("two-us", "us")),  # balanced by request id
    model("small", ("small-eu", "eu"), context_window=8_000, max_output_tokens=1_000),
    model("tools", ("tools-eu", "eu"), capabilities={Capability.CHAT, Capability.TOOLS}),
    model("secret", ("secret-dc", "onprem"), certified_for={DataClass.RESTRICTED}),
    model("unbounded", ("nw-eu", "eu"), context_window=0),
    model("far", ("far-us", "us")),  # outside the EU constraint of tenant A's policy
]
ALIASES = [m.alias for m in MODELS]
POLICIES: dict[str, dict[str, Any]] = {
    TENANT.id: {
        "allowed_models": ALIASES,
        "constraints": {
            "jurisdictions": ["EU"],
            "certification_required_from": "confidential",
            "allow_egress": True,
        },
    },
    OTHER.id: {"allowed_models": ALIASES, "constraints": {"allow_egress": True}},
    # Plans under a cost ceiling depend on the request's size: never reused.
    THIRD.id: {"allowed_models": ALIASES, "constraints": {"max_cost_usd": 0.00002, "allow_egress": True}},
    "": {"allowed_models": ["one"]},
}
CONFIG = runtime(MODELS, PROVIDERS, POLICIES, [TENANT, OTHER, THIRD])
DEPLOYMENTS = sorted(d.id for m in MODELS for d in m.deployments)
NODE = NodeContext(mode=DeploymentMode.ON_PREM)

needs = st.builds(
    RouteQuery,
    tenant=st.sampled_from([TENANT, OTHER, THIRD]),
    model=st.sampled_from([*ALIASES, "unknown"]),
    capabilities=st.sampled_from(
        [
            frozenset(),
            frozenset({Capability.CHAT}),
            CHAT_STREAM,
            frozenset({Capability.CHAT, Capability.TOOLS}),
        ]
    ),
    # Mostly requests most models may serve, so plans are made and asked for again.
    data_classification=st.sampled_from(
        [DataClass.UNSPECIFIED] * 3 + [DataClass.PUBLIC, DataClass.RESTRICTED]
    ),
)
sizes = st.tuples(
    st.sampled_from([0, 10, 6_999, 7_000, 7_001, 127_000, 200_000]),
    st.sampled_from([None, 1, 1_000, 1_001]),
    st.sampled_from(["r1", "r2", "r3", "r4"]),
)


def decided(table: Any, query: RouteQuery, health: Any) -> Any:
    try:
        return plan_route(table, query, health)
    except SignalboxError as exc:
        return (type(exc), str(exc), getattr(exc, "dropped", None))


@settings(max_examples=150, deadline=None)
@given(
    pool=st.lists(needs, min_size=1, max_size=3),
    steps=st.lists(
        st.tuples(st.integers(0, 2), sizes, st.sampled_from(["", "", "", "heal", *DEPLOYMENTS])),
        min_size=1,
        max_size=40,
    ),
)
def test_a_table_that_has_decided_before_decides_as_a_fresh_one(
    pool: list[RouteQuery], steps: list[tuple[int, tuple[int, int | None, str], str]]
) -> None:
    """A few requests' needs, asked again and again with other sizes and request ids while
    breakers open and recover."""
    clock = FakeClock()
    dispatcher = Dispatcher(clock=clock, breaker=BreakerSettings(failure_threshold=1, cooldown_s=10))
    seasoned = build_route_table(CONFIG, NODE)
    candidates = {c.deployment.id: c for found in seasoned.candidates.values() for c in found}
    for which, (tokens, max_out, request_id), event in steps:
        if event == "heal":  # every open breaker half-opens
            clock.advance(10)
        elif event:  # this deployment's breaker opens: plans must move it to the back
            dispatcher.state(candidates[event]).record_failure()
        query = replace(
            pool[which % len(pool)],
            estimated_input_tokens=tokens,
            max_output_tokens=max_out,
            request_id=request_id,
        )
        fresh = decided(build_route_table(CONFIG, NODE), query, dispatcher.health)
        assert decided(seasoned, query, dispatcher.health) == fresh
        event_name = "planned" if not isinstance(fresh, tuple) else fresh[0].__name__
        hypothesis.event(event_name)


def test_the_same_needs_get_the_same_plan_object_and_other_needs_their_own() -> None:
    table = build_route_table(CONFIG, NODE)
    base = RouteQuery(tenant=OTHER, model="one", capabilities=frozenset({Capability.CHAT}))
    first = plan_route(table, base)
    assert plan_route(table, replace(base, request_id="other", estimated_input_tokens=99)) is first
    assert (
        plan_route(table, replace(base, capabilities=frozenset({Capability.CHAT, Capability.STREAMING})))
        is not first
    )
    secret = replace(base, model="secret")
    assert plan_route(table, replace(secret, data_classification=DataClass.RESTRICTED)) is not plan_route(
        table, secret
    )


def test_a_plan_balanced_by_request_id_is_never_reused() -> None:
    table = build_route_table(CONFIG, NODE)
    chosen = {plan_route(table, RouteQuery(tenant=TENANT, model="two", request_id=f"r{i}")).chosen.key
              for i in range(64)}  # fmt: skip
    assert chosen == {"two-eu"}  # the US deployment is outside tenant A's jurisdictions
    chosen = {plan_route(table, RouteQuery(tenant=OTHER, model="two", request_id=f"r{i}")).chosen.key
              for i in range(64)}  # fmt: skip
    assert chosen == {"two-eu", "two-us"}


def test_a_request_too_large_for_the_window_is_refused_after_a_small_one_was_planned() -> None:
    table = build_route_table(CONFIG, NODE)
    small = RouteQuery(tenant=TENANT, model="small", estimated_input_tokens=10)
    assert plan_route(table, small).chosen.key == "small-eu"
    refused = decided(table, replace(small, estimated_input_tokens=7_500, max_output_tokens=1_000), None)
    assert refused[0].__name__ == "NoEligibleCandidate"
    assert "context window 8000" in refused[1]


def test_a_plan_made_while_a_deployment_was_troubled_is_not_reused_once_it_recovered() -> None:
    clock = FakeClock()
    dispatcher = Dispatcher(clock=clock, breaker=BreakerSettings(failure_threshold=1, cooldown_s=10))
    table = build_route_table(CONFIG, NODE)
    query = RouteQuery(tenant=OTHER, model="one")
    dispatcher.state(plan_route(table, query).chosen).record_failure()
    troubled = plan_route(table, query, dispatcher.health)
    assert troubled.deferred == (("one@eu", "circuit breaker open"),)
    clock.advance(10)
    dispatcher.state(troubled.chosen).record_success(5.0)
    assert plan_route(table, query, dispatcher.health).deferred == ()


def test_the_table_keeps_a_bounded_number_of_named_routes() -> None:
    table = build_route_table(CONFIG, NODE)
    policy = table.routes_for(TENANT.id)
    assert policy is not None
    for i in range(MAX_NAMED + 10):
        fake = replace(policy.policy, policy_id=f"p{i}")
        table.explicit(fake, CONFIG.models["one"])
    assert len(table.named) <= MAX_NAMED


def test_a_data_class_the_model_is_not_certified_for_is_refused_after_a_plain_request() -> None:
    table = build_route_table(CONFIG, NODE)
    plain = RouteQuery(tenant=OTHER, model="one")
    assert plan_route(table, plain).chosen.key == "one-eu"
    refused = decided(table, replace(plain, data_classification=DataClass.RESTRICTED), None)
    assert refused[0].__name__ == "NoEligibleCandidate"
    assert "not certified for restricted data" in refused[1]


def test_a_cost_ceiling_is_checked_for_each_request() -> None:
    table = build_route_table(CONFIG, NODE)
    cheap = RouteQuery(tenant=THIRD, model="one", estimated_input_tokens=1, max_output_tokens=1)
    assert plan_route(table, cheap).chosen.key == "one-eu"
    refused = decided(table, replace(cheap, estimated_input_tokens=100_000), None)
    assert refused[0].__name__ == "NoEligibleCandidate"
    assert "estimated cost" in refused[1]
