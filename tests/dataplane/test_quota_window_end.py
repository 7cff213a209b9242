"""Budget quota a node holds when its window ends is that window's, not the next one's.

A node leased nano-USD of today's budget; at midnight it still held some, and spent it in the
new day, where no ledger had granted it: the new day's budget ran past its limit by what
every worker held at midnight (and an air-gapped node's own ledger, the only count it has,
never knew). The grant says how long its window has left; past that, what the bucket holds is
void and the new window starts as a bucket never leased does (one request on credit, counted
by its first lease)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from dataplane.config.model import LimitsConfig, RuntimeConfig, TenantConfig
from dataplane.errors import LimitExceeded
from dataplane.quota import Kind, QuotaLeaser, Quotas
from dataplane.quota.local import LocalLedger, serve, socket_path
from dataplane.snapshot.compile import compile_snapshot
from signalbox.api.config.v1 import quota_pb2_grpc, snapshot_pb2
from signalbox.tls import ClientTls, aio_channel
from tests.dataplane.conftest import snapshot
from tests.dataplane.test_quota import Clock

BUDGET = 100_000
REQUEST = 10_000


def _config() -> RuntimeConfig:
    snap = snapshot(1, "http://127.0.0.1:9")
    next(t for t in snap.tenants if t.id == "t-acme").limits.CopyFrom(
        snapshot_pb2.Limits(budget_day_nanos=BUDGET)
    )
    return compile_snapshot(snap, hashlib.sha256(snap.SerializeToString()).digest())


def _at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


TENANT = TenantConfig("t-acme", "acme", limits=LimitsConfig(budget_day_nanos=BUDGET))


@dataclass
class _Node:
    """A node worker's buckets and leaser, and the air-gapped ledger they lease from."""

    wall: list[float]
    clock: Clock
    ledger: LocalLedger
    quotas: Quotas
    leaser: QuotaLeaser
    stub: quota_pb2_grpc.QuotaServiceStub


@asynccontextmanager
async def _node(tmp_path: Path) -> AsyncIterator[_Node]:
    """30 seconds before midnight, one request (on credit) and its lease."""
    wall = [_at("2026-11-30T23:59:30")]
    config = _config()
    ledger = LocalLedger(lambda: config, tmp_path / "quota", clock=lambda: wall[0])
    ledger.load()
    server = await serve(ledger, "node-1", tmp_path)
    clock = Clock()
    quotas = Quotas(clock=clock)
    target = f"unix:{socket_path(tmp_path)}"
    leaser = QuotaLeaser(quotas, target, ClientTls(insecure=True), holder="node-1/0")
    try:
        async with aio_channel(target, ClientTls(insecure=True)) as channel:
            stub = quota_pb2_grpc.QuotaServiceStub(channel)
            assert quotas.admit(TENANT, "", None, 0, REQUEST) is not None  # on credit
            await leaser.round(stub)
            yield _Node(wall, clock, ledger, quotas, leaser, stub)
    finally:
        await server.stop(None)


async def test_quota_held_at_midnight_is_not_spent_in_the_new_day(tmp_path: Path) -> None:
    async with _node(tmp_path) as node:
        quotas = node.quotas
        (bucket,) = quotas.buckets.values()
        assert bucket.holding >= 2 * REQUEST  # 30 seconds before midnight, quota in hand
        assert bucket.window == "2026-11-30"

        # Midnight passes (on both clocks): December 1st, nothing of it granted yet. The
        # tenant sends a burst, then one request a round until the new day is used up.
        node.wall[0] += 60
        node.clock.now += 60
        spent = 0
        for i in range(100):
            for _ in range(3 if i == 0 else 1):
                try:
                    reservation = quotas.admit(TENANT, "", None, 0, REQUEST)
                except LimitExceeded:
                    continue
                quotas.settle(reservation, 0, REQUEST)
                spent += REQUEST
            if bucket.exhausted_until > node.clock.now:
                break
            await node.leaser.round(node.stub)
            assert bucket.window == "2026-12-01"
            # The new day's ledger counts all the node spent in it (and what it holds).
            counted = node.ledger.spent("t-acme", "", Kind.BUDGET_DAY) - max(0.0, bucket.holding)
            assert counted >= spent, (i, counted, spent)
        else:
            raise AssertionError("the new day's budget never ran out")
        assert spent <= BUDGET, spent


async def test_a_new_window_without_a_reachable_ledger_still_spends_at_the_last_leases_rate(
    tmp_path: Path,
) -> None:
    """Failing open, a budget is spent at the rate of its last leases: the window's end must
    not turn that into no limit at all (a bucket never leased is not enforced)."""
    async with _node(tmp_path) as node:
        quotas = node.quotas
    node.clock.now += 60  # midnight passes: a request of the new day, then the ledger is out of reach
    assert quotas.admit(TENANT, "", None, 0, REQUEST) is not None
    quotas.reachable = False
    served = 0
    for _ in range(50):
        try:
            quotas.admit(TENANT, "", None, 0, REQUEST)
            served += 1
        except LimitExceeded:
            break
    assert served * REQUEST < BUDGET, served


async def test_a_request_reserved_before_midnight_gives_nothing_back_to_the_new_day(tmp_path: Path) -> None:
    """A request reserves its worst case from today's quota and ends after midnight having
    cost less: the rest was today's, handed back into the new day's bucket it was spent
    there, where no ledger counted it."""
    async with _node(tmp_path) as node:
        quotas = node.quotas
        (bucket,) = quotas.buckets.values()
        before = quotas.admit(TENANT, "", None, 0, REQUEST)  # in flight at midnight
        node.wall[0] += 60
        node.clock.now += 60
        after = quotas.admit(TENANT, "", None, 0, REQUEST)  # the new day's first: on credit
        quotas.settle(before, 0, REQUEST // 5)
        quotas.settle(after, 0, REQUEST)
        await node.leaser.round(node.stub)
        counted = node.ledger.spent("t-acme", "", Kind.BUDGET_DAY) - max(0.0, bucket.holding)
        assert counted >= REQUEST, counted
