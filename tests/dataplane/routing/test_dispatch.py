"""The Dispatcher against real upstream HTTP servers (the simulator), through the real
``openai_compatible`` adapter: retries, fallbacks, Retry-After, breakers, deadlines,
streaming and shadow traffic."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from dataplane.chat import ChatResponse, StreamChunk
from dataplane.config.model import TenantConfig
from dataplane.errors import (
    AllCandidatesFailed,
    ContentFiltered,
    DeadlineExceeded,
    UpstreamBadRequest,
    UpstreamUnavailable,
)
from dataplane.providers.base import ProviderAdapter
from dataplane.providers.registry import build_adapter
from dataplane.routing.candidate import Candidate
from dataplane.routing.dispatch import Dispatcher, DispatchFailed, ShadowOutcome
from dataplane.routing.health import BreakerSettings, BreakerState
from dataplane.routing.planner import plan_route
from dataplane.routing.query import RoutePlan, RouteQuery
from dataplane.routing.table import build_route_table
from dataplane.upstream import UpstreamClient
from signalbox.shell.simulator import Behaviour, Simulator
from tests.dataplane.upstream.rawserver import Peer, RawServer, openai_completion
from tests.dataplane.upstream.rawserver import answer as raw_answer
from tests.helpers import eventually

from .support import HELLO, FakeClock, completer, model, provider, runtime

TENANT = TenantConfig("t1", "Tenant One", tier="gold")

CONTEXT_ERROR = {
    "error": {
        "message": "This model's maximum context length is 8000 tokens.",
        "type": "invalid_request_error",
        "code": "context_length_exceeded",
    }
}
OVERLOADED = {"error": {"message": "Overloaded", "type": "overloaded_error"}}
FILTER_ERROR = {"error": {"message": "filtered", "type": "invalid_request_error", "code": "content_filter"}}


class Stack:
    """Two simulators as two providers, the registry over them, and a dispatcher."""

    def __init__(
        self,
        sim_a: Simulator,
        sim_b: Simulator,
        http: UpstreamClient,
        policy: dict[str, Any],
        dispatcher: Dispatcher,
    ) -> None:
        pa = provider("pa", sim_a.base_url + "/v1")
        pb = provider("pb", sim_b.base_url + "/v1")
        models = [
            model("sim-fast", ("fast-a", "pa"), ("fast-b", "pb")),
            model("solo", ("solo-a", "pa")),
            model("sim-smart", ("smart-b", "pb")),
            model("small", ("small-a", "pa"), context_window=8_000),
            model("mid", ("mid-a", "pa"), context_window=8_000),
            model("large", ("large-b", "pb"), context_window=128_000),
        ]
        self.config = runtime(models, [pa, pb], {TENANT.id: policy}, [TENANT])
        self.table = build_route_table(self.config)
        self.adapters: dict[str, ProviderAdapter] = {p.id: build_adapter(p, http, None) for p in (pa, pb)}
        self.dispatcher = dispatcher
        self.attempt = completer(self.adapters)

    def plan(self, request_id: str = "r", *, health: bool = True, **query: Any) -> RoutePlan:
        return plan_route(
            self.table,
            RouteQuery(TENANT, request_id=request_id, **query),
            self.dispatcher.health if health else None,
        )

    def plan_starting_with(self, key: str) -> RoutePlan:
        """A plan (without health) whose load balancing put ``key`` first."""
        for i in range(100):
            plan = self.plan(f"find-{i}", health=False)
            if plan.chosen.key == key:
                return plan
        raise AssertionError(f"no request id puts {key} first")


def outcomes(attempts: list[Any]) -> list[tuple[str, str]]:
    return [(a.candidate.key, a.outcome) for a in attempts]


def rules(*models: str, **rule: Any) -> dict[str, Any]:
    # Visibility is explicit: the policy allows exactly the models its rule uses.
    shadow = [rule["shadow"]["model"]] if "shadow" in rule else []
    return {"allowed_models": sorted({*models, *shadow}), "rules": [{"models": list(models), **rule}]}


# ---- fallback triggers ----


async def test_server_errors_fail_over_before_any_retry(
    sim_a: Simulator, sim_b: Simulator, http: UpstreamClient, clock: FakeClock
) -> None:
    policy = rules("sim-fast", "sim-smart", retry={"max_attempts": 5, "backoff_base_ms": 100})
    stack = Stack(
        sim_a, sim_b, http, policy, Dispatcher(clock=clock, sleep=clock.sleep, rng=random.Random(1))
    )
    for sim in (sim_a, sim_b):
        sim.set_behaviour("sim-fast", Behaviour(fail_status=500))
    plan = stack.plan()
    result, candidate, attempts = await stack.dispatcher.call(plan, stack.attempt, deadline=clock() + 30)
    assert isinstance(result, ChatResponse)
    assert candidate.key == "smart-b"
    first, second = plan.ordered[0].key, plan.ordered[1].key
    # Another deployment beats a backoff on the failing one: no retry, no sleep.
    assert outcomes(attempts) == [(first, "server_error"), (second, "server_error"), ("smart-b", "ok")]
    assert attempts[0].http_status == 500
    assert clock.slept == []
    assert sim_a.stats("sim-fast").chat == 1
    assert sim_b.stats("sim-fast").chat == 1


async def test_when_every_candidate_failed_they_are_retried_with_backoff(
    sim_a: Simulator, sim_b: Simulator, http: UpstreamClient, clock: FakeClock
) -> None:
    policy = rules("sim-fast", retry={"max_attempts": 5, "backoff_base_ms": 100})
    stack = Stack(
        sim_a, sim_b, http, policy, Dispatcher(clock=clock, sleep=clock.sleep, rng=random.Random(1))
    )
    for sim in (sim_a, sim_b):
        sim.set_behaviour("sim-fast", Behaviour(fail_status=503, fail_times=1, error_body=OVERLOADED))
    plan = stack.plan()
    _, candidate, attempts = await stack.dispatcher.call(plan, stack.attempt, deadline=clock() + 30)
    first, second = plan.ordered[0].key, plan.ordered[1].key
    assert outcomes(attempts) == [(first, "overloaded"), (second, "overloaded"), (first, "ok")]
    assert candidate.key == first
    # Full jitter under the first ceiling (100 ms), before the retry only.
    assert len(clock.slept) == 1
    assert 0 <= clock.slept[0] <= 0.1
    assert [a.backoff_ms > 0 for a in attempts] == [False, False, clock.slept[0] >= 0.001]


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (500, None, "server_error"),
        (502, None, "server_error"),
        (503, OVERLOADED, "overloaded"),
        (529, OVERLOADED, "overloaded"),
        (429, None, "rate_limited"),
    ],
)
async def test_retryable_statuses_fall_back(
    sim_a: Simulator,
    sim_b: Simulator,
    http: UpstreamClient,
    clock: FakeClock,
    status: int,
    body: dict[str, Any] | None,
    kind: str,
) -> None:
    stack = Stack(
        sim_a,
        sim_b,
        http,
        rules("solo", "sim-smart", retry={"attempts_per_deployment": 1}),
        Dispatcher(clock=clock, sleep=clock.sleep),
    )
    sim_a.set_behaviour("solo", Behaviour(fail_status=status, error_body=body))
    _, candidate, attempts = await stack.dispatcher.call(stack.plan(), stack.attempt, deadline=clock() + 30)
    assert outcomes(attempts) == [("solo-a", kind), ("smart-b", "ok")]
    assert candidate.model.alias == "sim-smart"


async def test_a_timeout_falls_back(sim_a: Simulator, sim_b: Simulator, http: UpstreamClient) -> None:
    stack = Stack(
        sim_a, sim_b, http, rules("solo", "sim-smart", retry={"attempts_per_deployment": 1}), Dispatcher()
    )
    sim_a.set_behaviour("solo", Behaviour(latency_ms=400))
    attempt = completer(stack.adapters, cap_s=0.1)  # the adapter's own per-attempt timeout
    _, candidate, attempts = await stack.dispatcher.call(stack.plan(), attempt, deadline=time.monotonic() + 5)
    assert outcomes(attempts) == [("solo-a", "timeout"), ("smart-b", "ok")]
    assert candidate.key == "smart-b"


async def test_context_too_long_moves_to_a_larger_window_only(
    sim_a: Simulator, sim_b: Simulator, http: UpstreamClient, clock: FakeClock
) -> None:
    stack = Stack(
        sim_a, sim_b, http, rules("small", "mid", "large"), Dispatcher(clock=clock, sleep=clock.sleep)
    )
    sim_a.set_behaviour("small", Behaviour(fail_status=400, error_body=CONTEXT_ERROR))
    _, candidate, attempts = await stack.dispatcher.call(stack.plan(), stack.attempt, deadline=clock() + 30)
    # Not retried on the same model, and "mid" (same window) is skipped.
    assert outcomes(attempts) == [("small-a", "context_too_long"), ("large-b", "ok")]
    assert candidate.model.alias == "large"
    assert sim_a.stats("mid").total == 0


async def test_content_filter_falls_back_only_when_the_policy_opts_in(
    sim_a: Simulator, sim_b: Simulator, http: UpstreamClient, clock: FakeClock
) -> None:
    sim_a.set_behaviour("solo", Behaviour(fail_status=400, error_body=FILTER_ERROR))
    strict = Stack(sim_a, sim_b, http, rules("solo", "sim-smart"), Dispatcher(clock=clock, sleep=clock.sleep))
    with pytest.raises(DispatchFailed) as caught:
        await strict.dispatcher.call(strict.plan(), strict.attempt, deadline=clock() + 30)
    assert isinstance(caught.value.error, ContentFiltered)
    assert outcomes(caught.value.attempts) == [("solo-a", "content_filtered")]
    assert sim_b.stats("sim-smart").total == 0

    opt_in = rules(
        "solo",
        "sim-smart",
        retry={"fallback_on": ["server_error", "content_filtered"]},
    )
    lenient = Stack(sim_a, sim_b, http, opt_in, Dispatcher(clock=clock, sleep=clock.sleep))
    _, _, attempts = await lenient.dispatcher.call(lenient.plan(), lenient.attempt, deadline=clock() + 30)
    assert outcomes(attempts) == [("solo-a", "content_filtered"), ("smart-b", "ok")]


QUOTA_ERROR = {"error": {"message": "quota", "type": "insufficient_quota", "code": "insufficient_quota"}}


async def test_quota_exhaustion_falls_back_only_when_the_policy_says_so(
    sim_a: Simulator, sim_b: Simulator, http: UpstreamClient, clock: FakeClock
) -> None:
    sim_a.set_behaviour("solo", Behaviour(fail_status=429, error_body=QUOTA_ERROR))
    default = Stack(
        sim_a, sim_b, http, rules("solo", "sim-smart"), Dispatcher(clock=clock, sleep=clock.sleep)
    )
    with pytest.raises(DispatchFailed) as caught:
        await default.dispatcher.call(default.plan(), default.attempt, deadline=clock() + 30)
    assert outcomes(caught.value.attempts) == [("solo-a", "quota_exhausted")]

    opt_in = rules("solo", "sim-smart", retry={"fallback_on": ["server_error", "quota_exhausted"]})
    stack = Stack(sim_a, sim_b, http, opt_in, Dispatcher(clock=clock, sleep=clock.sleep))
    _, _, attempts = await stack.dispatcher.call(stack.plan(), stack.attempt, deadline=clock() + 30)
    # Not retried on the same deployment: an empty wallet does not refill in a backoff.
    assert outcomes(attempts) == [("solo-a", "quota_exhausted"), ("smart-b", "ok")]


async def test_a_request_error_is_not_retried_anywhere(
    sim_a: Simulator, sim_b: Simulator, http: UpstreamClient, clock: FakeClock
) -> None:
    stack = Stack(sim_a, sim_b, http, rules("solo", "sim-smart"), Dispatcher(clock=clock, sleep=clock.sleep))
    sim_a.set_behaviour("solo", Behaviour(fail_status=400))
    with pytest.raises(DispatchFailed) as caught:
        await stack.dispatcher.call(stack.plan(), stack.attempt, deadline=clock() + 30)
    assert isinstance(caught.value.error, UpstreamBadRequest)
    assert len(caught.value.attempts) == 1
    assert sim_b.stats("sim-smart").total == 0


async def test_every_candidate_failing_reports_all_attempts(
    sim_a: Simulator, sim_b: Simulator, http: UpstreamClient, clock: FakeClock
) -> None:
    stack = Stack(sim_a, sim_b, http, rules("solo", "sim-smart"), Dispatcher(clock=clock, sleep=clock.sleep))
    sim_a.set_behaviour("solo", Behaviour(fail_status=500))
    sim_b.set_behaviour("sim-smart", Behaviour(fail_status=503, error_body=OVERLOADED))
    with pytest.raises(DispatchFailed) as caught:
        await stack.dispatcher.call(stack.plan(), stack.attempt, deadline=clock() + 30)
    assert isinstance(caught.value.error, AllCandidatesFailed)
    # max_attempts (3) bounds the total over every candidate.
    # Each once, then a second pass: max_attempts (3) bounds the total.
    assert outcomes(caught.value.attempts) == [
        ("solo-a", "server_error"),
        ("smart-b", "overloaded"),
        ("solo-a", "server_error"),
    ]
    assert "3 attempt(s)" in caught.value.error.message


# ---- Retry-After ----


async def test_retry_after_moves_on_and_keeps_the_deployment_out_until_it_passes(
    sim_a: Simulator, sim_b: Simulator, http: UpstreamClient, clock: FakeClock
) -> None:
    stack = Stack(sim_a, sim_b, http, rules("sim-fast"), Dispatcher(clock=clock, sleep=clock.sleep))
    sim_a.set_behaviour("sim-fast", Behaviour(fail_status=429, retry_after=5))
    plan = stack.plan_starting_with("fast-a")
    _, candidate, attempts = await stack.dispatcher.call(plan, stack.attempt, deadline=clock() + 30)
    assert outcomes(attempts) == [("fast-a", "rate_limited"), ("fast-b", "ok")]
    assert attempts[0].retry_after_s == 5
    assert clock.slept == [], "another deployment beats waiting"

    # Routing now puts it last ...
    assert stack.plan_starting_with("fast-b").chosen.key == "fast-b"
    deferred = stack.plan("any").deferred
    assert [name for name, _ in deferred] == ["sim-fast@pa"]
    # ... and a request whose deadline ends before the Retry-After skips it even if first.
    skipped: list[tuple[str, str]] = []
    _, candidate, attempts = await stack.dispatcher.call(
        plan, stack.attempt, deadline=clock() + 2, skipped=skipped
    )
    assert outcomes(attempts) == [("fast-b", "ok")]
    assert skipped == [("sim-fast@pa", "Retry-After 5.0 s outlasts the deadline")]
    assert sim_a.stats("sim-fast").total == 1
    # Once it has passed, the deployment is tried again.
    clock.advance(5)
    sim_a.set_behaviour("sim-fast", Behaviour())
    _, candidate, _ = await stack.dispatcher.call(plan, stack.attempt, deadline=clock() + 2)
    assert candidate.key == "fast-a"


async def test_retry_after_is_waited_out_when_there_is_no_other_candidate(
    sim_a: Simulator, sim_b: Simulator, http: UpstreamClient, clock: FakeClock
) -> None:
    stack = Stack(sim_a, sim_b, http, rules("solo"), Dispatcher(clock=clock, sleep=clock.sleep))
    sim_a.set_behaviour("solo", Behaviour(fail_status=429, retry_after=2, fail_times=1))
    _, _, attempts = await stack.dispatcher.call(stack.plan(), stack.attempt, deadline=clock() + 30)
    assert outcomes(attempts) == [("solo-a", "rate_limited"), ("solo-a", "ok")]
    assert clock.slept[0] >= 2


async def test_retry_after_beyond_the_deadline_is_not_waited_for(
    sim_a: Simulator, sim_b: Simulator, http: UpstreamClient, clock: FakeClock
) -> None:
    stack = Stack(sim_a, sim_b, http, rules("solo"), Dispatcher(clock=clock, sleep=clock.sleep))
    sim_a.set_behaviour("solo", Behaviour(fail_status=429, retry_after=60))
    start = clock()
    with pytest.raises(DispatchFailed) as caught:
        await stack.dispatcher.call(stack.plan(), stack.attempt, deadline=start + 10)
    assert outcomes(caught.value.attempts) == [("solo-a", "rate_limited")]
    assert clock() == start, "never slept"


# ---- circuit breaker ----


async def test_breaker_closed_open_half_open_closed(
    sim_a: Simulator, sim_b: Simulator, http: UpstreamClient, clock: FakeClock
) -> None:
    breaker = BreakerSettings(failure_threshold=3, cooldown_s=30)
    stack = Stack(
        sim_a,
        sim_b,
        http,
        rules("solo", "sim-smart", retry={"attempts_per_deployment": 1}),
        Dispatcher(clock=clock, sleep=clock.sleep, breaker=breaker),
    )
    health = stack.dispatcher.health
    sim_a.set_behaviour("solo", Behaviour(fail_status=500))

    async def serve() -> Candidate:
        _, candidate, _ = await stack.dispatcher.call(stack.plan(), stack.attempt, deadline=clock() + 30)
        return candidate

    for _ in range(3):
        assert (await serve()).key == "smart-b"
    state = health.get("solo-a")
    assert state is not None
    assert state.state is BreakerState.OPEN
    assert state.error_rate > 0

    # Open: the failing deployment gets nothing.
    for _ in range(10):
        assert (await serve()).key == "smart-b"
    assert sim_a.stats("solo").total == 3

    # Half-open after the cool-down: one probe, which fails, opens it again.
    clock.advance(30)
    assert health.get("solo-a").state is BreakerState.HALF_OPEN  # type: ignore[union-attr]
    assert (await serve()).key == "smart-b"
    assert sim_a.stats("solo").total == 4
    assert health.get("solo-a").state is BreakerState.OPEN  # type: ignore[union-attr]

    # The upstream recovers; the next probe succeeds and closes the breaker.
    sim_a.set_behaviour("solo", Behaviour())
    clock.advance(30)
    assert (await serve()).key == "solo-a"
    assert health.get("solo-a").state is BreakerState.CLOSED  # type: ignore[union-attr]
    assert (await serve()).key == "solo-a"
    assert {key: h.state for key, h in health.all().items()} == {
        "solo-a": BreakerState.CLOSED,
        "smart-b": BreakerState.CLOSED,
    }


async def test_one_of_two_deployments_failing_every_call(
    sim_a: Simulator, sim_b: Simulator, http: UpstreamClient, clock: FakeClock
) -> None:
    """1,000 requests all succeed; once the breaker is open the failing deployment sees only probes."""
    breaker = BreakerSettings(failure_threshold=5, cooldown_s=30)
    stack = Stack(
        sim_a, sim_b, http, rules("sim-fast"), Dispatcher(clock=clock, sleep=clock.sleep, breaker=breaker)
    )
    sim_a.set_behaviour("sim-fast", Behaviour(fail_status=500))
    received_per_window = []
    before = 0
    for i in range(1000):
        if i and i % 100 == 0:
            received_per_window.append(sim_a.stats("sim-fast").total - before)
            before = sim_a.stats("sim-fast").total
            clock.advance(30)  # a cool-down passes: the breaker lets one probe through
        result, candidate, _ = await stack.dispatcher.call(
            stack.plan(f"req-{i}"), stack.attempt, deadline=clock() + 30
        )
        assert isinstance(result, ChatResponse)
        assert candidate.key == "fast-b"
    received_per_window.append(sim_a.stats("sim-fast").total - before)

    assert sim_b.stats("sim-fast").chat == 1000
    # Until it opened: exactly the threshold of failures. After: at most one probe per cool-down.
    assert received_per_window[0] == 5
    probes = received_per_window[1:]
    assert all(p <= 1 for p in probes), probes
    assert sum(probes) >= 1, "probes do reach it"
    # The same, from the upstreams' own counters over HTTP.
    async with httpx.AsyncClient() as web:
        failing = (await web.get(sim_a.base_url + "/_sim/stats")).json()["models"]["sim-fast"]
        healthy = (await web.get(sim_b.base_url + "/_sim/stats")).json()["models"]["sim-fast"]
    assert failing["chat"] == failing["failed"] == 5 + sum(probes)
    assert healthy["chat"] == 1000
    assert healthy["failed"] == 0


def test_half_open_admits_a_limited_number_of_probes(clock: FakeClock) -> None:
    dispatcher = Dispatcher(
        clock=clock, breaker=BreakerSettings(failure_threshold=1, cooldown_s=10, half_open_probes=2)
    )
    candidate = _candidate()
    state = dispatcher.state(candidate)
    state.record_failure()
    assert not state.try_acquire()
    clock.advance(10)
    assert [state.try_acquire() for _ in range(3)] == [True, True, False]
    state.record_success(12.0)
    assert state.current() is BreakerState.CLOSED
    assert state.try_acquire()


def test_a_high_error_rate_opens_the_breaker_without_consecutive_failures(clock: FakeClock) -> None:
    settings = BreakerSettings(failure_threshold=100, error_rate_threshold=0.5, min_calls=20)
    state = Dispatcher(clock=clock, breaker=settings).state(_candidate())
    for i in range(40):
        # Two failures for each success: never five in a row, but two thirds fail.
        if i % 3 == 2:
            state.record_success(10.0)
        else:
            state.record_failure()
        if state.current() is BreakerState.OPEN:
            break
    assert state.current() is BreakerState.OPEN
    assert state.calls >= 20


def test_rate_limits_and_request_errors_do_not_open_the_breaker(clock: FakeClock) -> None:
    # Only deployment-health errors count; see FAILURE_KINDS. The dispatcher
    # records through the same state, so this checks its table directly.
    from dataplane.routing.health import FAILURE_KINDS

    assert {"rate_limited", "context_too_long", "content_filtered", "bad_request"}.isdisjoint(FAILURE_KINDS)
    assert {"server_error", "timeout", "overloaded"} <= FAILURE_KINDS


# ---- deadlines ----


def always_failing(
    sim_a: Simulator,
    sim_b: Simulator,
    http: UpstreamClient,
    *,
    backoff_ms: tuple[int, int],
    dispatcher: Callable[[BreakerSettings], Dispatcher],
) -> Stack:
    """ "solo" failing every call, up to ten tries, and a breaker that never opens
    here: only the deadline can end the retries."""
    retry = {
        "max_attempts": 10,
        "attempts_per_deployment": 10,
        "backoff_base_ms": backoff_ms[0],
        "backoff_cap_ms": backoff_ms[1],
    }
    patient = BreakerSettings(failure_threshold=100, min_calls=100)
    stack = Stack(sim_a, sim_b, http, rules("solo", retry=retry), dispatcher(patient))
    sim_a.set_behaviour("solo", Behaviour(fail_status=500))
    return stack


async def test_retries_never_outlive_the_deadline(
    sim_a: Simulator, sim_b: Simulator, http: UpstreamClient
) -> None:
    # Real clock and sleeps; seeded jitter, so ten tries always need more than the deadline.
    stack = always_failing(
        sim_a,
        sim_b,
        http,
        backoff_ms=(100, 400),
        dispatcher=lambda b: Dispatcher(breaker=b, rng=random.Random(3)),
    )
    started: list[float] = []

    async def attempt(candidate: Candidate, remaining: float) -> ChatResponse:
        started.append(time.monotonic())
        return await stack.attempt(candidate, remaining)

    deadline = time.monotonic() + 0.5
    with pytest.raises(DispatchFailed) as caught:
        await stack.dispatcher.call(stack.plan(), attempt, deadline=deadline)
    finished = time.monotonic()
    assert all(t < deadline for t in started), "no attempt starts after the deadline"
    # The dispatcher stops before a backoff would cross the deadline; what is left
    # is the event loop's own latency on a busy machine.
    assert finished <= deadline + 0.1
    error = caught.value.error
    assert isinstance(error, DeadlineExceeded)
    made = caught.value.attempts
    assert 1 <= len(made) == len(started) < 10
    assert all(a.outcome == "server_error" for a in made)
    assert f"after {len(made)} attempt(s)" in error.message
    assert "solo@pa: server_error" in error.message


async def test_a_slow_upstream_is_cut_at_the_deadline(
    sim_a: Simulator, sim_b: Simulator, http: UpstreamClient
) -> None:
    dispatcher = Dispatcher(breaker=BreakerSettings(failure_threshold=1))
    stack = Stack(sim_a, sim_b, http, rules("solo", "sim-smart"), dispatcher)
    sim_a.set_behaviour("solo", Behaviour(latency_ms=900))
    started = time.monotonic()
    with pytest.raises(DispatchFailed) as caught:
        await stack.dispatcher.call(stack.plan(), stack.attempt, deadline=started + 0.2)
    assert time.monotonic() - started < 0.5, "cut at the deadline, not when the upstream answered"
    assert isinstance(caught.value.error, DeadlineExceeded)
    assert outcomes(caught.value.attempts) == [("solo-a", "timeout")]
    assert sim_b.stats("sim-smart").total == 0
    # A deployment slower than its callers' deadlines fails them: the cut attempt counts
    # (the breaker opens at a threshold of one) and its latency is at least what it took.
    health = dispatcher.health.get("solo-a")
    assert health is not None
    assert health.state is BreakerState.OPEN
    assert health.error_rate > 0
    assert health.latency_ms is not None
    assert health.latency_ms >= 150


@pytest.mark.parametrize("seed", range(8))
async def test_backoff_never_sleeps_past_the_deadline(
    sim_a: Simulator, sim_b: Simulator, http: UpstreamClient, clock: FakeClock, seed: int
) -> None:
    stack = always_failing(
        sim_a,
        sim_b,
        http,
        backoff_ms=(500, 4000),
        dispatcher=lambda b: Dispatcher(clock=clock, sleep=clock.sleep, rng=random.Random(seed), breaker=b),
    )
    deadline = clock() + 3
    with pytest.raises(DispatchFailed) as caught:
        await stack.dispatcher.call(stack.plan(), stack.attempt, deadline=deadline)
    assert isinstance(caught.value.error, DeadlineExceeded)
    assert clock() < deadline
    assert len(caught.value.attempts) == len(clock.slept) + 1


# ---- streaming ----


async def test_a_stream_falls_back_before_its_first_chunk(
    sim_a: Simulator, sim_b: Simulator, http: UpstreamClient, clock: FakeClock
) -> None:
    stack = Stack(sim_a, sim_b, http, rules("solo", "sim-smart"), Dispatcher(clock=clock, sleep=clock.sleep))
    sim_a.set_behaviour("solo", Behaviour(fail_status=503))

    def start(candidate: Candidate, remaining: float) -> AsyncIterator[StreamChunk]:
        return stack.adapters[candidate.provider.id].stream(
            candidate.deployment.upstream_model, HELLO, timeout=remaining
        )

    first, rest, candidate, attempts = await stack.dispatcher.open_stream(
        stack.plan(), start, deadline=clock() + 30
    )
    text = first.text + "".join([chunk.text async for chunk in rest])
    assert text
    assert candidate.key == "smart-b"
    assert outcomes(attempts)[-1] == ("smart-b", "ok")
    assert sim_b.stats("sim-smart").stream == 1


async def test_a_stream_never_falls_back_after_its_first_chunk(
    sim_a: Simulator, sim_b: Simulator, http: UpstreamClient, clock: FakeClock
) -> None:
    stack = Stack(sim_a, sim_b, http, rules("solo", "sim-smart"), Dispatcher(clock=clock, sleep=clock.sleep))
    started: list[str] = []

    async def breaks_midway(candidate: Candidate) -> AsyncIterator[StreamChunk]:
        yield StreamChunk(text="partial ")
        raise UpstreamUnavailable("connection lost mid-stream")

    def start(candidate: Candidate, remaining: float) -> AsyncIterator[StreamChunk]:
        started.append(candidate.key)
        return breaks_midway(candidate)

    first, rest, _, attempts = await stack.dispatcher.open_stream(stack.plan(), start, deadline=clock() + 30)
    assert first.text == "partial "
    with pytest.raises(UpstreamUnavailable):
        async for _ in rest:
            pass
    assert started == ["solo-a"]
    assert outcomes(attempts) == [("solo-a", "ok")]


# ---- shadow traffic ----


async def test_shadow_traffic_is_mirrored_and_its_outcome_reported(
    sim_a: Simulator, sim_b: Simulator, http: UpstreamClient, clock: FakeClock
) -> None:
    policy = rules("solo", shadow={"model": "sim-smart", "share": 1.0})
    stack = Stack(sim_a, sim_b, http, policy, Dispatcher(clock=clock, sleep=clock.sleep))
    reported: list[ShadowOutcome[ChatResponse]] = []
    plan = stack.plan()
    assert plan.shadow is not None
    result, candidate, _ = await stack.dispatcher.call(plan, stack.attempt, deadline=clock() + 30)
    stack.dispatcher.shadow(plan, stack.attempt, deadline=clock() + 30, on_outcome=reported.append)
    assert candidate.key == "solo-a"
    (outcome,) = await eventually(lambda: reported, message="shadow outcome")
    assert outcome.outcome == "ok"
    assert outcome.candidate.key == "smart-b"
    assert isinstance(outcome.result, ChatResponse)
    assert sim_b.stats("sim-smart").chat == 1
    assert result.message.text


async def test_a_failing_shadow_never_touches_the_response(
    sim_a: Simulator, sim_b: Simulator, http: UpstreamClient, clock: FakeClock
) -> None:
    policy = rules("solo", shadow={"model": "sim-smart", "share": 1.0})
    stack = Stack(
        sim_a,
        sim_b,
        http,
        policy,
        Dispatcher(clock=clock, sleep=clock.sleep, breaker=BreakerSettings(failure_threshold=1)),
    )
    sim_b.set_behaviour("sim-smart", Behaviour(fail_status=500))
    reported: list[ShadowOutcome[ChatResponse]] = []
    for _ in range(3):
        plan = stack.plan()
        stack.dispatcher.shadow(plan, stack.attempt, deadline=clock() + 30, on_outcome=reported.append)
        _, _, attempts = await stack.dispatcher.call(plan, stack.attempt, deadline=clock() + 30)
        assert outcomes(attempts) == [("solo-a", "ok")]
        await stack.dispatcher.drain_shadows()
    # The first shadow failed and opened the shadow deployment's breaker; the rest were skipped.
    assert [o.outcome for o in reported] == ["server_error", "skipped", "skipped"]
    assert reported[1].error == "circuit breaker open"
    assert sim_b.stats("sim-smart").total == 1


async def test_no_shadow_in_the_plan_means_no_call(
    sim_a: Simulator, sim_b: Simulator, http: UpstreamClient, clock: FakeClock
) -> None:
    stack = Stack(sim_a, sim_b, http, rules("solo"), Dispatcher(clock=clock, sleep=clock.sleep))
    seen: list[object] = []
    assert (
        stack.dispatcher.shadow(stack.plan(), stack.attempt, deadline=clock() + 30, on_outcome=seen.append)
        is None
    )


# ---- helpers ----


def _candidate() -> Candidate:
    from .support import model as make_model
    from .support import provider as make_provider

    m = make_model("x", ("x-1", "px"))
    return Candidate(m, m.deployments[0], make_provider("px"))


@pytest.mark.parametrize("keeps_deadline", [True, False])
async def test_the_callers_deadline_holds_with_or_without_the_dispatchers_timer(
    sim_a: Simulator, sim_b: Simulator, http: UpstreamClient, keeps_deadline: bool
) -> None:
    # keeps_deadline: the pipeline's attempts end in a provider adapter, whose upstream client
    # bounds every wait by the attempt's deadline, so the dispatcher sets no timer of its own.
    stack = Stack(sim_a, sim_b, http, rules("solo", retry={"attempts_per_deployment": 1}), Dispatcher())
    sim_a.set_behaviour("solo", Behaviour(latency_ms=3_000))
    started = time.monotonic()
    with pytest.raises(DispatchFailed) as failed:
        await stack.dispatcher.call(
            stack.plan(), stack.attempt, deadline=started + 0.3, keeps_deadline=keeps_deadline
        )
    assert time.monotonic() - started < 2.5  # ended by the deadline, not by the upstream's answer
    assert outcomes(failed.value.attempts) == [("solo-a", "timeout")]
    assert isinstance(failed.value.error, DeadlineExceeded)


async def test_an_upstream_that_hangs_up_unanswered_is_retried_by_the_policy_as_an_attempt(
    sim_b: Simulator, http: UpstreamClient, clock: FakeClock
) -> None:
    # The upstream client never resends a written request on its own (it may have run
    # upstream): the dispatch policy does, and each send is an attempt the evidence shows.
    completion = openai_completion("solo-a", completion_id="chatcmpl-1")

    async def hang_up_on_the_second(server: RawServer, peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            server.requests.append(request)
            if len(server.requests) == 2:
                return  # read, then closed without an answer (a keep-alive race, a crash)
            await peer.send(raw_answer(completion))

    async with RawServer(hang_up_on_the_second) as upstream:
        sim_a = SimpleNamespace(base_url=upstream.url)
        stack = Stack(sim_a, sim_b, http, rules("solo"), Dispatcher(clock=clock, sleep=clock.sleep))  # type: ignore[arg-type]
        await stack.dispatcher.call(stack.plan("r1"), stack.attempt, deadline=clock() + 30)
        result, _, attempts = await stack.dispatcher.call(
            stack.plan("r2"), stack.attempt, deadline=clock() + 30
        )
        assert result.upstream_id == "chatcmpl-1"
        assert outcomes(attempts) == [("solo-a", "protocol_error"), ("solo-a", "ok")]
        assert len(upstream.requests) == 3  # the second call was sent twice, both attempts
