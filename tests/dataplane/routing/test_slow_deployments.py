"""Slow and hostile deployments against real upstream HTTP servers, through the real adapters:
a deployment slower than its callers' deadlines is routed around, an upstream's Retry-After
(or Gemini's retryDelay) is honoured for at most the node's cap, and hedging races the next
candidate beside a silent one and closes the loser's upstream call."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from dataplane.chat import ChatResponse, StreamChunk
from dataplane.config.model import TenantConfig
from dataplane.errors import DeadlineExceeded
from dataplane.providers.base import ProviderAdapter
from dataplane.providers.classify import parse_duration, parse_retry_after
from dataplane.providers.registry import build_adapter
from dataplane.routing.candidate import Candidate
from dataplane.routing.dispatch import Dispatcher, DispatchFailed
from dataplane.routing.health import BreakerState, DeploymentHealth
from dataplane.routing.planner import plan_route
from dataplane.routing.query import RoutePlan, RouteQuery
from dataplane.routing.table import build_route_table
from dataplane.upstream import UpstreamClient
from signalbox.shell.simulator import Behaviour, Simulator
from tests.dataplane.providers import canned
from tests.dataplane.providers.fakes import HANG, FakeUpstream, Reply, json_reply
from tests.helpers import eventually

from .support import HELLO, FakeClock, completer, model, provider, runtime
from .test_dispatch import Stack, outcomes, rules

TENANT = TenantConfig("t1", "Tenant One", tier="gold")
A_YEAR = 31_536_000


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as upstream:
        yield upstream


class Pair:
    """Model "first" on its own upstream (``first_url``, of ``first_type``) and "second" on
    a simulator: enough for hedging and Gemini tests."""

    def __init__(
        self,
        first_url: str,
        second: Simulator,
        http: UpstreamClient,
        policy: dict[str, Any],
        dispatcher: Dispatcher,
        first_type: str = "openai_compatible",
    ) -> None:
        p1 = provider("p1", first_url)
        if first_type != p1.type:
            p1 = replace(p1, type=first_type)
        p2 = provider("p2", second.base_url + "/v1")
        models = [model("first", ("first-1", "p1")), model("second", ("second-2", "p2"))]
        self.table = build_route_table(runtime(models, [p1, p2], {TENANT.id: policy}, [TENANT]))
        self.adapters: dict[str, ProviderAdapter] = {p.id: build_adapter(p, http, None) for p in (p1, p2)}
        self.dispatcher = dispatcher
        self.attempt = completer(self.adapters)

    def plan(self, request_id: str = "r") -> RoutePlan:
        return plan_route(self.table, RouteQuery(TENANT, request_id=request_id), self.dispatcher.health)


# ---- (a) a deployment slower than its callers' deadlines ----


async def test_a_deployment_slower_than_the_deadline_is_routed_around(
    sim_a: Simulator, sim_b: Simulator, http: UpstreamClient
) -> None:
    """Half the requests used to go to the slow deployment and time out, forever; now the
    cut attempts count, its breaker opens after a short warm-up and the rest succeed."""
    stack = Stack(sim_a, sim_b, http, rules("sim-fast"), Dispatcher())
    sim_a.set_behaviour("sim-fast", Behaviour(latency_ms=3000))  # the callers allow 0.25 s
    served: list[str] = []
    failed: list[DispatchFailed] = []
    for i in range(200):
        try:
            _, candidate, _ = await stack.dispatcher.call(
                stack.plan(f"req-{i}"), stack.attempt, deadline=time.monotonic() + 0.25
            )
        except DispatchFailed as exc:
            failed.append(exc)
        else:
            served.append(candidate.key)
    for exc in failed:
        assert isinstance(exc.error, DeadlineExceeded)
        assert outcomes(exc.attempts) == [("fast-a", "timeout")]
    assert len(served) >= 190, f"only {len(served)} of 200 succeeded"
    assert set(served) == {"fast-b"}
    slow = stack.dispatcher.health.get("fast-a")
    assert slow is not None
    assert slow.state is BreakerState.OPEN
    assert slow.latency_ms is not None
    assert slow.latency_ms >= 200, "a cut attempt is a lower bound on the latency"
    # Only the warm-up reached it (the default breaker opens at 5; its cool-down is 30 s).
    assert sim_a.stats("sim-fast").chat == 5
    assert ("sim-fast@pa", "circuit breaker open") in stack.plan("after").deferred


async def test_a_cut_timeout_feeds_the_latency_constraint(
    sim_a: Simulator, sim_b: Simulator, http: UpstreamClient
) -> None:
    stack = Stack(
        sim_a, sim_b, http, rules("solo", "sim-smart", constraints={"max_latency_ms": 150}), Dispatcher()
    )
    sim_a.set_behaviour("solo", Behaviour(latency_ms=3000))
    assert stack.plan().chosen.key == "solo-a"
    with pytest.raises(DispatchFailed) as caught:
        await stack.dispatcher.call(stack.plan(), stack.attempt, deadline=time.monotonic() + 0.3)
    assert outcomes(caught.value.attempts) == [("solo-a", "timeout")]
    # One cut attempt: the breaker is still closed, but its latency is known to exceed the bound.
    health = stack.dispatcher.health.get("solo-a")
    assert health is not None
    assert health.state is BreakerState.CLOSED
    plan = stack.plan()
    assert plan.chosen.key == "smart-b"
    (dropped,) = [why for label, why in plan.dropped if label == "solo@pa"]
    assert dropped.startswith("latency ")
    assert dropped.endswith("> max 150 ms")


@pytest.mark.parametrize("hedged", [False, True])
async def test_a_cancellation_at_the_callers_deadline_counts_as_the_timeout_it_is(
    sim_a: Simulator, sim_b: Simulator, http: UpstreamClient, hedged: bool
) -> None:
    """gRPC cancels the handler of a call whose deadline passed, and that can come before the
    attempt's own timer: the deployment was still that slow (breaker, latency). A caller
    that goes away well before its deadline says nothing about the deployment. Here the
    cancellation comes 2 ms before the deadline, so it always beats the attempt's timer."""
    retry: dict[str, Any] = {"attempts_per_deployment": 1}
    if hedged:
        retry["hedge"] = {"after_ms": 5_000, "max_extra": 1}
    stack = Stack(sim_a, sim_b, http, rules("solo", retry=retry), Dispatcher())
    sim_a.set_behaviour("solo", Behaviour(latency_ms=3000))
    loop = asyncio.get_running_loop()

    async def cancelled_at(before_deadline: float) -> None:
        deadline = time.monotonic() + 0.3
        call = loop.create_task(
            stack.dispatcher.call(stack.plan(), stack.attempt, deadline=deadline, keeps_deadline=True)
        )
        # From the same reading of the clock as the deadline (the loop's clock is monotonic): a
        # second reading could come more than 2 ms later on a busy machine, and the cancellation
        # after the attempt's timer.
        loop.call_at(deadline - before_deadline, call.cancel)
        with pytest.raises(asyncio.CancelledError):
            await call

    def health() -> DeploymentHealth:
        state = stack.dispatcher.health.get("solo-a")
        assert state is not None
        return state

    await cancelled_at(0.2)  # the caller went away
    assert health() == DeploymentHealth()
    for n in range(1, 6):
        await cancelled_at(0.002)  # the deadline's cancellation, ahead of the attempt's timer
        assert health().error_rate > 0
        latency = health().latency_ms
        assert latency is not None
        assert latency >= 250
        # The breaker opens at the 5th, as for timeouts the node noticed itself.
        assert health().state is (BreakerState.OPEN if n == 5 else BreakerState.CLOSED)


def test_a_censored_latency_only_raises_the_average(clock: FakeClock) -> None:
    from .test_dispatch import _candidate

    state = Dispatcher(clock=clock).state(_candidate())
    state.record_success(100.0)
    state.observe_at_least(50.0)
    assert state.latency_ms == 100.0, "a cut at 50 ms says nothing about a 100 ms deployment"
    state.record_failure(1100.0)
    assert state.latency_ms == pytest.approx(300.0)  # EWMA, alpha 0.2


# ---- (b) Retry-After is capped ----


async def test_a_retry_after_of_a_year_defers_the_deployment_for_at_most_the_cap(
    sim_a: Simulator, sim_b: Simulator, http: UpstreamClient
) -> None:
    stack = Stack(sim_a, sim_b, http, rules("sim-fast"), Dispatcher(max_retry_after_s=2.0))
    sim_a.set_behaviour("sim-fast", Behaviour(fail_status=429, retry_after=A_YEAR))
    plan = stack.plan_starting_with("fast-a")
    _, _, attempts = await stack.dispatcher.call(plan, stack.attempt, deadline=time.monotonic() + 5)
    assert outcomes(attempts) == [("fast-a", "rate_limited"), ("fast-b", "ok")]
    assert attempts[0].retry_after_s == A_YEAR, "recorded as sent"
    blocked = stack.dispatcher.health.get("fast-a")
    assert blocked is not None
    assert 0 < blocked.blocked_for_s <= 2.0
    ((label, why),) = stack.plan("any").deferred
    assert label == "sim-fast@pa"
    assert why.startswith("Retry-After for ")
    assert float(why.split()[2]) <= 2.0

    sim_a.set_behaviour("sim-fast", Behaviour())

    async def served_by_a() -> bool:
        # A deadline that outlasts the block: a call never fails for lack of time when the
        # block ends while it runs (it would time out on fast-a's first reply otherwise).
        _, candidate, _ = await stack.dispatcher.call(plan, stack.attempt, deadline=time.monotonic() + 5)
        return candidate.key == "fast-a"

    await eventually(served_by_a, timeout=6, interval=0.1, message="fast-a tried again after the cap")
    assert stack.dispatcher.health.get("fast-a").blocked_for_s == 0  # type: ignore[union-attr]


async def test_a_gemini_retry_delay_of_a_year_is_capped_too(
    fake: FakeUpstream, sim_b: Simulator, http: UpstreamClient
) -> None:
    pair = Pair(
        fake.base_url,
        sim_b,
        http,
        rules("first", retry={"attempts_per_deployment": 1}),
        Dispatcher(max_retry_after_s=2.0),
        first_type="gemini",
    )
    retry_info = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{A_YEAR}s"}
    fake.enqueue(json_reply(canned.gemini_error(429, "RESOURCE_EXHAUSTED", "slow down", retry_info), 429))
    with pytest.raises(DispatchFailed) as caught:
        await pair.dispatcher.call(pair.plan(), pair.attempt, deadline=time.monotonic() + 5)
    (attempt,) = caught.value.attempts
    assert (attempt.outcome, attempt.retry_after_s) == ("rate_limited", A_YEAR)
    health = pair.dispatcher.health.get("first-1")
    assert health is not None
    assert 0 < health.blocked_for_s <= 2.0

    fake.enqueue(json_reply(canned.gemini_response("back again")))
    blocked_until = time.monotonic() + health.blocked_for_s

    # A call whose deadline outlasts the (capped) block waits it out, then is served: the
    # deployment is not tried while its Retry-After runs, and is tried again right after.
    result, _, _ = await pair.dispatcher.call(pair.plan(), pair.attempt, deadline=time.monotonic() + 5)
    assert result.message.text == "back again"
    assert time.monotonic() >= blocked_until - 0.05, "tried before its (capped) Retry-After ended"
    assert len(fake.requests) == 2, "exactly one request before the block, one after"


def test_untrusted_retry_after_values_that_are_not_numbers_are_ignored(clock: FakeClock) -> None:
    assert parse_retry_after({"Retry-After": "31536000"}) == A_YEAR
    for bad in ("inf", "nan", "-inf", "1e999", "soon"):
        assert parse_retry_after({"Retry-After": bad}) is None, bad
        assert parse_duration(f"{bad}s") is None, bad
    assert parse_retry_after({"retry-after-ms": "nan", "Retry-After": "3"}) == 3
    assert parse_retry_after({"Retry-After": "-5"}) == 0
    from .test_dispatch import _candidate

    state = Dispatcher(clock=clock, max_retry_after_s=2.0).state(_candidate())
    assert state.block_for(math.nan) == 0
    assert state.blocked_for() == 0
    assert state.block_for(math.inf) == 2.0
    assert state.blocked_for() == 2.0


def test_the_cap_must_be_a_positive_number() -> None:
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="max_retry_after_s"):
            Dispatcher(max_retry_after_s=bad)


# ---- (c) hedging ----

HEDGE = {"hedge": {"after_ms": 100, "max_extra": 1}}


def _hanging() -> Reply:
    """Headers at once, then a body that never comes: an upstream that never answers."""
    return Reply(body=(b" ", HANG))


async def test_a_hedge_answers_from_the_second_candidate_and_cancels_the_first(
    fake: FakeUpstream, sim_b: Simulator, http: UpstreamClient
) -> None:
    pair = Pair(fake.base_url, sim_b, http, rules("first", "second", retry=HEDGE), Dispatcher())
    fake.enqueue(_hanging())
    started = time.monotonic()
    result, candidate, attempts = await pair.dispatcher.call(pair.plan(), pair.attempt, deadline=started + 10)
    took = time.monotonic() - started
    assert isinstance(result, ChatResponse)
    assert candidate.key == "second-2"
    assert took < 2, f"answered after {took:.2f} s: the first never answers, the hedge did"
    assert outcomes(attempts) == [("first-1", "hedged"), ("second-2", "ok")]
    assert [a.hedge for a in attempts] == [False, True]
    assert attempts[0].error == "cancelled: second@p2 answered first"
    assert attempts[0].duration_ms >= 100
    assert sim_b.stats("second").chat == 1
    await eventually(lambda: fake.disconnects == 1, message="the first upstream saw the disconnect")
    # Cancelled, not failed: no verdict on its breaker, but it is at least that slow.
    first = pair.dispatcher.health.get("first-1")
    assert first is not None
    assert (first.state, first.error_rate) == (BreakerState.CLOSED, 0.0)
    assert first.latency_ms is not None
    assert first.latency_ms >= 100


async def test_the_first_attempt_can_still_win_the_race(
    sim_a: Simulator, sim_b: Simulator, http: UpstreamClient, fake: FakeUpstream
) -> None:
    pair = Pair(sim_a.base_url + "/v1", sim_b, http, rules("first", "second", retry=HEDGE), Dispatcher())
    # Served from a simulator, slower than the hedge delay; the hedge goes to a silent upstream.
    pair.adapters["p2"] = build_adapter(provider("p2", fake.base_url), http, None)
    sim_a.set_behaviour("first", Behaviour(latency_ms=400))
    fake.enqueue(_hanging())
    _, candidate, attempts = await pair.dispatcher.call(
        pair.plan(), pair.attempt, deadline=time.monotonic() + 10
    )
    assert candidate.key == "first-1"
    assert outcomes(attempts) == [("first-1", "ok"), ("second-2", "hedged")]
    assert attempts[1].hedge
    await eventually(lambda: fake.disconnects == 1, message="the hedge's upstream saw the disconnect")


async def test_no_hedge_when_the_first_answers_in_time(
    sim_a: Simulator, sim_b: Simulator, http: UpstreamClient
) -> None:
    pair = Pair(sim_a.base_url + "/v1", sim_b, http, rules("first", "second", retry=HEDGE), Dispatcher())
    for i in range(5):
        _, _, attempts = await pair.dispatcher.call(
            pair.plan(f"r{i}"), pair.attempt, deadline=time.monotonic() + 10
        )
        assert outcomes(attempts) == [("first-1", "ok")]
    assert sim_b.stats("second").total == 0


async def test_a_failure_while_hedging_falls_over_as_usual(
    sim_a: Simulator, sim_b: Simulator, http: UpstreamClient
) -> None:
    """The first fails fast: no hedge timer involved, the second is a plain fallback."""
    pair = Pair(sim_a.base_url + "/v1", sim_b, http, rules("first", "second", retry=HEDGE), Dispatcher())
    sim_a.set_behaviour("first", Behaviour(fail_status=500))
    _, _, attempts = await pair.dispatcher.call(pair.plan(), pair.attempt, deadline=time.monotonic() + 10)
    assert outcomes(attempts) == [("first-1", "server_error"), ("second-2", "ok")]
    assert [a.hedge for a in attempts] == [False, False]


async def test_when_every_hedged_attempt_is_silent_the_deadline_ends_them_all(
    fake: FakeUpstream, sim_b: Simulator, http: UpstreamClient
) -> None:
    policy = rules("first", "second", retry={"hedge": {"after_ms": 50, "max_extra": 3}})
    pair = Pair(fake.base_url, sim_b, http, policy, Dispatcher())
    fake.enqueue(_hanging())
    sim_b.set_behaviour("second", Behaviour(latency_ms=3000))
    started = time.monotonic()
    with pytest.raises(DispatchFailed) as caught:
        await pair.dispatcher.call(pair.plan(), pair.attempt, deadline=started + 0.4)
    assert time.monotonic() - started < 1.5
    assert isinstance(caught.value.error, DeadlineExceeded)
    # Two candidates: one hedge at most, whatever max_extra says; both cut and counted.
    assert outcomes(caught.value.attempts) == [("first-1", "timeout"), ("second-2", "timeout")]
    assert [a.hedge for a in caught.value.attempts] == [False, True]
    for key in ("first-1", "second-2"):
        assert pair.dispatcher.health.get(key).error_rate > 0  # type: ignore[union-attr]
    assert len(fake.requests) == 1


async def test_streams_are_never_hedged(sim_a: Simulator, sim_b: Simulator, http: UpstreamClient) -> None:
    pair = Pair(sim_a.base_url + "/v1", sim_b, http, rules("first", "second", retry=HEDGE), Dispatcher())
    sim_a.set_behaviour("first", Behaviour(latency_ms=300))

    def start(candidate: Candidate, remaining: float) -> AsyncIterator[StreamChunk]:
        return pair.adapters[candidate.provider.id].stream(
            candidate.deployment.upstream_model, HELLO, timeout=remaining
        )

    first, rest, candidate, attempts = await pair.dispatcher.open_stream(
        pair.plan(), start, deadline=time.monotonic() + 10
    )
    assert first.text + "".join([c.text async for c in rest])
    assert candidate.key == "first-1"
    assert outcomes(attempts) == [("first-1", "ok")]
    assert sim_b.stats("second").total == 0
