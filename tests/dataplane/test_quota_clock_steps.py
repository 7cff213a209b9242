"""An air-gapped node's own quota ledger (``dataplane.quota.local``) under a wall clock that
steps: an NTP correction or a restored VM must neither reopen a spent budget window nor
hand out a later window's budget twice."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

from dataplane.config.model import RuntimeConfig
from dataplane.quota import Kind
from dataplane.quota.local import LocalLedger
from dataplane.snapshot.compile import compile_snapshot
from signalbox.api.config.v1 import quota_pb2, snapshot_pb2
from tests.dataplane.conftest import snapshot

DAY_BUDGET = 1_000
MONTH_BUDGET = 5_000


def _config(limits: snapshot_pb2.Limits | None = None) -> RuntimeConfig:
    snap = snapshot(1, "http://127.0.0.1:9")
    tenant = next(t for t in snap.tenants if t.id == "t-acme")
    tenant.limits.CopyFrom(
        limits or snapshot_pb2.Limits(budget_day_nanos=DAY_BUDGET, budget_month_nanos=MONTH_BUDGET)
    )
    payload = snap.SerializeToString()
    return compile_snapshot(snap, hashlib.sha256(payload).digest())


def _at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def _ask(kind: Kind, want: int) -> quota_pb2.QuotaAsk:
    return quota_pb2.QuotaAsk(
        scope=quota_pb2.QuotaScope(tenant_id="t-acme", kind=int(kind)),  # type: ignore[arg-type]
        want=want,
    )


async def _lease(ledger: LocalLedger, kind: Kind, want: int) -> quota_pb2.QuotaGrant:
    (grant,) = ledger.lease([_ask(kind, want)], "node-1/0")
    await ledger.persist()
    return grant


async def test_a_clock_stepping_back_across_midnight_reopens_no_budget_window(tmp_path: Path) -> None:
    now = [_at("2026-11-30T23:59:00")]
    config = _config()
    ledger = LocalLedger(lambda: config, tmp_path / "quota", clock=lambda: now[0])
    ledger.load()

    # The last minute of November: the day is spent, and 4,000 of the month.
    day = await _lease(ledger, Kind.BUDGET_DAY, DAY_BUDGET)
    assert (day.granted, day.window, day.exhausted) == (DAY_BUDGET, "2026-11-30", True)
    assert day.window_seconds_left == 60  # by the ledger's clock: the workers count it down
    month = await _lease(ledger, Kind.BUDGET_MONTH, 4_000)
    assert (month.granted, month.window, month.window_seconds_left) == (4_000, "2026-11", 60)

    # Midnight, a new day and month: 600 of the new day is spent.
    now[0] = _at("2026-12-01T00:00:30")
    day = await _lease(ledger, Kind.BUDGET_DAY, 600)
    assert (day.granted, day.window) == (600, "2026-12-01")
    month = await _lease(ledger, Kind.BUDGET_MONTH, 600)
    assert (month.granted, month.window) == (600, "2026-12")

    # NTP steps the clock back a minute, into November: its spent day and month stay spent.
    now[0] = _at("2026-11-30T23:59:40")
    day = await _lease(ledger, Kind.BUDGET_DAY, DAY_BUDGET)
    assert (day.granted, day.window, day.exhausted) == (0, "2026-11-30", True)
    month = await _lease(ledger, Kind.BUDGET_MONTH, MONTH_BUDGET)
    assert (month.granted, month.window) == (1_000, "2026-11")  # what was left of it, no more

    # The clock catches up: December's day still has the 600 counted, after a restart too.
    now[0] = _at("2026-12-01T00:01:00")
    restarted = LocalLedger(lambda: config, tmp_path / "quota", clock=lambda: now[0])
    restarted.load()
    assert restarted.spent("t-acme", "", Kind.BUDGET_DAY) == 600
    day = await _lease(restarted, Kind.BUDGET_DAY, DAY_BUDGET)
    assert (day.granted, day.window, day.exhausted) == (DAY_BUDGET - 600, "2026-12-01", True)
    month = await _lease(restarted, Kind.BUDGET_MONTH, MONTH_BUDGET)
    assert (month.granted, month.window) == (MONTH_BUDGET - 600, "2026-12")

    # Windows older than the previous one (and than a budget's two newest) are dropped: the
    # file does not grow without end.
    for moment in ("2027-01-15T12:00:00", "2027-01-20T12:00:00"):
        now[0] = _at(moment)
        await _lease(restarted, Kind.BUDGET_DAY, 1)
        await _lease(restarted, Kind.BUDGET_MONTH, 1)
    kept = {(b["kind"], b["window"]) for b in json.loads(restarted.path.read_bytes())["budgets"]}
    assert kept == {
        (Kind.BUDGET_DAY, "2027-01-20"),
        (Kind.BUDGET_DAY, "2027-01-15"),
        (Kind.BUDGET_MONTH, "2027-01"),
        (Kind.BUDGET_MONTH, "2026-12"),
    }


async def test_a_wall_clock_stepped_ahead_refills_no_rate(tmp_path: Path) -> None:
    """Rates refill with the time that passed, and an air-gapped node's live in memory: they
    go by the monotonic clock. By the wall clock, an NTP step an hour ahead refilled every
    bucket a whole burst at once."""
    now = [_at("2026-11-30T12:00:00")]
    config = _config(snapshot_pb2.Limits(requests_per_minute=60))
    ledger = LocalLedger(lambda: config, tmp_path / "quota", clock=lambda: now[0])
    ledger.load()
    ask = _ask(Kind.REQUESTS_PER_MINUTE, 60)
    (first,) = ledger.lease([ask], "node-1/0")
    assert first.granted == 60  # a full bucket: a minute of the limit
    now[0] += 3600
    (after,) = ledger.lease([ask], "node-1/0")
    # What refilled while the test ran (one a second), not a burst.
    assert after.granted <= 2, after.granted


async def test_a_clock_that_jumped_years_ahead_and_back_reopens_no_budget_window(tmp_path: Path) -> None:
    """A node booted with its clock in 2099 leases in 2099's windows; every write then dropped
    the real day's and month's counts as long past, and once NTP set the clock right the day
    and month were granted from zero again."""
    now = [_at("2026-12-01T10:00:00")]
    config = _config()
    ledger = LocalLedger(lambda: config, tmp_path / "quota", clock=lambda: now[0])
    ledger.load()
    assert (await _lease(ledger, Kind.BUDGET_DAY, 600)).granted == 600
    assert (await _lease(ledger, Kind.BUDGET_MONTH, 600)).granted == 600

    now[0] = _at("2099-06-01T10:00:00")  # the node restarts with its clock in 2099
    restarted = LocalLedger(lambda: config, tmp_path / "quota", clock=lambda: now[0])
    restarted.load()
    assert (await _lease(restarted, Kind.BUDGET_DAY, 100)).window == "2099-06-01"
    assert (await _lease(restarted, Kind.BUDGET_MONTH, 100)).window == "2099-06"

    now[0] = _at("2026-12-01T10:05:00")  # NTP sets it right
    day = await _lease(restarted, Kind.BUDGET_DAY, DAY_BUDGET)
    assert (day.granted, day.window, day.exhausted) == (DAY_BUDGET - 600, "2026-12-01", True)
    month = await _lease(restarted, Kind.BUDGET_MONTH, MONTH_BUDGET)
    assert (month.granted, month.window) == (MONTH_BUDGET - 600, "2026-12")
