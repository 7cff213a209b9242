"""The request path's buckets (``dataplane.quota.buckets``): all or nothing, settled to the
real usage, and each tenant's ``on_unreachable`` while no lease can be had."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dataplane.config.model import LimitsConfig, TenantConfig
from dataplane.errors import LimitExceeded, QuotaUnavailable
from dataplane.quota import Kind, QuotaLeaser, Quotas
from signalbox.tls import ClientTls

TENANT_LIMITS = LimitsConfig(requests_per_minute=600, tokens_per_minute=6000, budget_day_nanos=10**9)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _leased(quotas: Quotas, holding: float = 1000.0, rate: float = 0.0) -> None:
    for bucket in quotas.buckets.values():
        bucket.leased, bucket.holding, bucket.granted_rate = True, holding, rate


def test_a_request_takes_from_every_limit_and_settles_to_its_real_usage() -> None:
    quotas = Quotas()
    tenant = TenantConfig("t", "acme", limits=TENANT_LIMITS)
    key = LimitsConfig(tokens_per_minute=5000)
    for kind in Kind:
        quotas.bucket(tenant, "", TENANT_LIMITS, kind)
        quotas.bucket(tenant, "k", key, kind)
    _leased(quotas)
    reservation = quotas.admit(tenant, "k", key, 300, 500)
    assert reservation is not None
    held = {(scope[1], scope[2]): b.holding for scope, b in quotas.buckets.items()}
    assert held == {
        ("", Kind.REQUESTS_PER_MINUTE): 999,
        ("", Kind.TOKENS_PER_MINUTE): 700,
        ("", Kind.BUDGET_DAY): 500,
        ("k", Kind.TOKENS_PER_MINUTE): 700,
    }
    quotas.settle(reservation, 100, 200)
    quotas.settle(reservation, 100, 200)  # once only
    held = {(scope[1], scope[2]): b.holding for scope, b in quotas.buckets.items()}
    assert held[("", Kind.TOKENS_PER_MINUTE)] == held[("k", Kind.TOKENS_PER_MINUTE)] == 900
    assert held[("", Kind.BUDGET_DAY)] == 800


def test_a_short_limit_refuses_the_request_and_gives_back_what_the_others_gave() -> None:
    quotas = Quotas(lease_interval=1.0)
    tenant = TenantConfig("t", "acme", limits=TENANT_LIMITS)
    key = LimitsConfig(requests_per_minute=60)
    for kind in Kind:
        quotas.bucket(tenant, "", TENANT_LIMITS, kind)
    quotas.bucket(tenant, "k", key, Kind.REQUESTS_PER_MINUTE)
    _leased(quotas)
    quotas.buckets[("t", "k", Kind.REQUESTS_PER_MINUTE)].holding = 0
    with pytest.raises(LimitExceeded) as refused:
        quotas.admit(tenant, "k", key, 10, 10)
    assert refused.value.limit == "api key k of tenant acme requests per minute"
    assert refused.value.retry_after >= 1.0
    assert quotas.buckets[("t", "", Kind.REQUESTS_PER_MINUTE)].holding == 1000


def test_the_first_request_of_a_limit_is_on_credit_the_next_wait_for_the_lease() -> None:
    quotas = Quotas()
    kicked = []
    quotas.short = lambda: kicked.append(1)
    tenant = TenantConfig("t", "acme", limits=LimitsConfig(requests_per_minute=60))
    assert quotas.admit(tenant, "", None, 1, 0) is not None
    with pytest.raises(LimitExceeded, match="quota lease pending"):
        quotas.admit(tenant, "", None, 1, 0)
    assert kicked


def test_a_budget_reported_exhausted_refuses_whatever_it_holds_until_its_window_ends() -> None:
    clock = Clock()
    quotas = Quotas(clock=clock)
    tenant = TenantConfig("t", "acme", limits=LimitsConfig(budget_day_nanos=10**9))
    bucket = quotas.bucket(tenant, "", LimitsConfig(budget_day_nanos=10**9), Kind.BUDGET_DAY)
    assert bucket is not None
    _leased(quotas, holding=10**6)
    # The ledger reported today's window used up.
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    quotas.exhaust(bucket, (end - timedelta(days=1)).strftime("%Y-%m-%d"))
    left = (end - datetime.now(UTC)).total_seconds()
    with pytest.raises(LimitExceeded) as refused:
        quotas.admit(tenant, "", None, 1, 1000)
    assert left - 5 <= refused.value.retry_after <= left + 5
    clock.now += left + 1  # the window is over: what the bucket holds is the new window's
    assert quotas.admit(tenant, "", None, 1, 1000) is not None


def test_unreachable_fail_closed_refuses_fail_open_refills_at_the_last_lease_rate() -> None:
    clock = Clock()
    quotas = Quotas(lease_interval=1.0, clock=clock)
    closed = TenantConfig("c", "strict", limits=LimitsConfig(requests_per_minute=60, fail_closed=True))
    opened = TenantConfig("o", "loose", limits=LimitsConfig(requests_per_minute=60))
    fresh = TenantConfig("f", "fresh", limits=LimitsConfig(requests_per_minute=60))
    for tenant in (closed, opened):
        quotas.bucket(tenant, "", tenant.limits, Kind.REQUESTS_PER_MINUTE)  # type: ignore[arg-type]
    _leased(quotas, holding=0, rate=2.0)
    quotas.reachable = False
    with pytest.raises(QuotaUnavailable, match="tenant strict requests per minute: no quota can be leased"):
        quotas.admit(closed, "", None, 1, 0)
    # Never leased: nothing to go by, not enforced.
    for _ in range(5):
        quotas.admit(fresh, "", None, 1, 0)
    # Leased at 2 per second: about that many per second, no more.
    with pytest.raises(LimitExceeded):
        quotas.admit(opened, "", None, 1, 0)
    served = 0
    for _ in range(10):
        clock.now += 0.5
        for _ in range(3):
            try:
                quotas.admit(opened, "", None, 1, 0)
                served += 1
            except LimitExceeded:
                pass
    assert served == 10


def _no_ledger(tmp_path: Path) -> tuple[str, ClientTls]:
    return f"unix:{tmp_path / 'no.sock'}", ClientTls(insecure=True)


@contextlib.asynccontextmanager
async def _running(leaser: QuotaLeaser) -> AsyncIterator[tuple[QuotaLeaser, asyncio.Task[None]]]:
    """``leaser`` running; cancelled at the end if it has not ended."""
    task = asyncio.get_running_loop().create_task(leaser.run())
    try:
        yield leaser, task
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_a_leaser_woken_as_it_is_cancelled_stops(tmp_path: Path) -> None:
    """A node's stop cancels its leaser and waits for it: a wake-up (a request short of quota,
    frequent while a node drains) landing with the cancellation must not swallow it."""
    quotas = Quotas()
    async with _running(QuotaLeaser(quotas, *_no_ledger(tmp_path), interval=30.0)) as (_, task):
        for _ in range(3):
            await asyncio.sleep(0)  # the leaser waits for a wake-up
        quotas.short()
        await asyncio.sleep(0)  # the wait it was in completes...
        task.cancel()  # ...and the stop arrives before the leaser runs on
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(5):
                await task


async def test_a_leaser_closed_with_no_ledger_to_reach_logs_its_lost_last_round_and_ends(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The stop's last round (``close``) is bounded: a ledger out of reach costs the stop one
    failed call, logged, and what the worker held stays with it (counted as spent)."""
    quotas = Quotas()
    tenant = TenantConfig("t", "acme", limits=LimitsConfig(budget_day_nanos=10**9))
    quotas.bucket(tenant, "", LimitsConfig(budget_day_nanos=10**9), Kind.BUDGET_DAY)
    _leased(quotas, holding=-500.0)  # a mirror's charge past what was held
    async with _running(QuotaLeaser(quotas, *_no_ledger(tmp_path), interval=30.0)) as (leaser, task):
        with caplog.at_level(logging.WARNING, logger="signalbox.dataplane.quota"):
            leaser.close()
            async with asyncio.timeout(10):
                await task
    assert any("the stop's last lease failed" in r.getMessage() for r in caplog.records)
    [bucket] = quotas.buckets.values()
    assert bucket.holding == -500.0  # the debt was not reported: still this worker's
