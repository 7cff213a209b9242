"""What the dispatcher leaves behind is freed by reference counting alone.

A serving worker runs the cyclic collector seldom (``dataplane.collector``): an error caught
in a dispatcher frame and raised again from a local of it would take a traceback through
that frame, whose locals reach the error: the request's objects kept until a collection
many thousands of objects later. Each test dispatches with the collector off and looks for
the node's objects among the garbage (``tests.dataplane.cycles``). The HTTP-level tests
(``tests/dataplane/http/test_no_reference_cycles.py``) cover the usual single-attempt paths;
these cover hedged dispatch, which a node runs only when a policy asks for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import pytest

from dataplane.config.model import TenantConfig
from dataplane.errors import UpstreamBadRequest, UpstreamUnavailable
from dataplane.routing.candidate import Candidate
from dataplane.routing.dispatch import Dispatcher, DispatchFailed
from dataplane.routing.planner import plan_route
from dataplane.routing.query import RouteQuery
from dataplane.routing.table import RouteTable, build_route_table
from tests.dataplane.cycles import garbage

from .support import model, provider, runtime
from .test_dispatch import rules

TENANT = TenantConfig("t1", "Tenant One", tier="gold")
HEDGE = {"hedge": {"after_ms": 20, "max_extra": 1}}
ROUNDS = 10

Attempt = Callable[[Candidate, float], Awaitable[str]]


class BrokeItsContract(Exception):
    """What an attempt raises when it breaks its contract (neither an answer, a
    ``ProviderError`` nor a timeout): a bug, which the dispatcher passes on as it is."""


def _by_model(first: Callable[[], Awaitable[str]], second: Callable[[], Awaitable[str]]) -> Attempt:
    async def attempt(candidate: Candidate, remaining: float) -> str:
        return await (first if candidate.model.alias == "first" else second)()

    return attempt


async def _silent() -> str:
    await asyncio.sleep(30)
    return "never"


async def _answers() -> str:
    return "answer"


async def _broken() -> str:
    raise BrokeItsContract("the attempt broke its contract")


async def _unavailable() -> str:
    raise UpstreamUnavailable("the upstream answered 503", provider="p1", http_status=503)


async def _bad_request() -> str:
    raise UpstreamBadRequest("the upstream refused the request", provider="p1", http_status=400)


def _table() -> RouteTable:
    """Models "first" and "second", one deployment each, under a policy that hedges."""
    p1, p2 = provider("p1"), provider("p2")
    models = [model("first", ("first-1", "p1")), model("second", ("second-2", "p2"))]
    return build_route_table(
        runtime(models, [p1, p2], {TENANT.id: rules("first", "second", retry=HEDGE)}, [TENANT])
    )


async def _dispatch(attempt: Attempt, rounds: int = ROUNDS) -> list[str]:
    """``rounds`` hedged dispatches with the collector off (after one to warm up); the
    node's objects only the cyclic collector would have freed."""
    table = _table()

    async def once(dispatcher: Dispatcher, i: int) -> None:
        plan = plan_route(table, RouteQuery(TENANT, request_id=f"r{i}"), dispatcher.health)
        with contextlib.suppress(DispatchFailed, BrokeItsContract):
            await dispatcher.call(plan, attempt, deadline=time.monotonic() + 10)

    await once(Dispatcher(), -1)
    with garbage() as found:
        for i in range(rounds):
            await once(Dispatcher(), i)  # a fresh dispatcher: no breaker opens across rounds
    return found.ours


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(_answers, _answers, id="the first answers before the hedge"),
        pytest.param(_silent, _answers, id="the hedge answers, the first is cancelled"),
        pytest.param(_unavailable, _answers, id="the first fails over to the second"),
        pytest.param(_bad_request, _answers, id="the first fails with an error not to fall over on"),
        pytest.param(_unavailable, _unavailable, id="every attempt fails"),
        pytest.param(_broken, _answers, id="the first attempt breaks its contract"),
        pytest.param(_silent, _broken, id="the hedge breaks its contract, the first is cancelled"),
    ],
)
async def test_hedged_dispatch_leaves_no_cycles(
    first: Callable[[], Awaitable[str]], second: Callable[[], Awaitable[str]]
) -> None:
    assert await _dispatch(_by_model(first, second)) == []


async def test_an_attempt_that_breaks_its_contract_is_raised_as_it_is() -> None:
    """What the cycle's fix must keep: the caller gets the attempt's own error, with the
    attempt's frames in its traceback (it is a bug, and the log must show where)."""
    table = _table()
    dispatcher = Dispatcher()
    plan = plan_route(table, RouteQuery(TENANT, request_id="r"), dispatcher.health)
    with pytest.raises(BrokeItsContract, match="broke its contract") as caught:
        await dispatcher.call(plan, _by_model(_broken, _answers), deadline=time.monotonic() + 10)
    names = []
    tb = caught.value.__traceback__
    while tb is not None:
        names.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    assert "_broken" in names
