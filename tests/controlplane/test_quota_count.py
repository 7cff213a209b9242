"""Each unit of a budget's spend counts once, whichever of its two reports arrives first.

A node's spend past what it held (a mirror's charge, a request that cost more than it
reserved) reaches the ledger twice: as ``overspent`` in the node's next lease, and as the cost
of its evidence record. The ledger raised ``used`` to the evidence's count at every lease and
then added the lease's ``overspent`` on top: a record ingested before the lease round that
reported the same charge counted it twice (lease 500, spend 800: ``used`` 1,100)."""

from __future__ import annotations

import json
import time

from controlplane.evidence.ingest import Batch
from dataplane.evidence.records import GENESIS_HASH, seal
from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.config.v1 import quota_pb2
from tests.controlplane.conftest import Admin
from tests.controlplane.test_quota import DAY, _tenant
from tests.fixtures.postgres import RunningControlPlane, sql_execute, sql_rows

MONTH = quota_pb2.QUOTA_KIND_BUDGET_MONTH


def _ask(
    tenant_id: str, want: int, *, overspent: int = 0, returned: int = 0, window: str = ""
) -> quota_pb2.QuotaAsk:
    return quota_pb2.QuotaAsk(
        scope=quota_pb2.QuotaScope(tenant_id=tenant_id, kind=DAY),
        want=want,
        returned=returned,
        overspent=overspent,
        returned_window=window,
    )


class _Chain:
    """One node worker's evidence chain: records sealed in order, shipped as the node would."""

    def __init__(self, cp: RunningControlPlane, holder: str, tenant_id: str) -> None:
        self.cp, self.holder, self.tenant_id = cp, holder, tenant_id
        self.node = holder.split("/")[0]
        self.lines: list[bytes] = []
        self._prev = GENESIS_HASH

    def record(self, nanos: int) -> bytes:
        seq = len(self.lines) + 1
        line = seal(
            {
                "seq": seq,
                "prev_hash": self._prev,
                "ts": time.time(),
                "record_id": f"{seq:032x}",
                "node_id": self.node,
                "chain_id": self.holder,
                "tenant_id": self.tenant_id,
                "api_key_id": "",
                "cost": {"currency": "USD", "total_nanos": nanos},
            }
        )
        self._prev = json.loads(line)["hash"]
        self.lines.append(line)
        return line

    async def ship(self, *lines: bytes) -> None:
        ingest = self.cp.cp.evidence
        assert ingest is not None
        ack = await ingest.ingest(self.node, Batch(self.holder, list(lines)))
        assert ack.refused is None, ack


async def _spent(admin: Admin) -> int:
    return int((await admin.GetLimits(admin_pb2.GetLimitsRequest(tenant="acme"))).spent_day_nanos)


async def _lease(cp: RunningControlPlane, holder: str, ask: quota_pb2.QuotaAsk) -> quota_pb2.QuotaGrant:
    ledger = cp.cp.quota
    assert ledger is not None
    return (await ledger.lease([ask], holder))[0]


async def test_an_overspend_shipped_before_the_lease_that_reports_it_counts_once(
    admin: Admin, control_plane: RunningControlPlane
) -> None:
    tenant_id = await _tenant(admin, budget_day_nanos=10_000)
    first = await _lease(control_plane, "n1/0", _ask(tenant_id, 500))
    assert first.granted == 500
    chain = _Chain(control_plane, "n1/0", tenant_id)
    await chain.ship(chain.record(800))  # it spent 800: 300 past what it held
    assert await _spent(admin) == 800
    # Another worker's lease meanwhile reads (and, before the fix, stored) the evidence count.
    await _lease(control_plane, "n2/0", _ask(tenant_id, 0))
    assert await _spent(admin) == 800
    again = await _lease(control_plane, "n1/0", _ask(tenant_id, 0, overspent=300, window=first.window))
    assert again.granted == 0
    assert await _spent(admin) == 800
    await chain.ship(*chain.lines)  # resent (at-least-once delivery): counted once
    assert await _spent(admin) == 800
    # What is granted after counts on top of what was spent: 800 + 1,000.
    more = await _lease(control_plane, "n1/0", _ask(tenant_id, 1000))
    assert more.granted == 1000
    assert await _spent(admin) == 1800


async def test_an_overspend_reported_before_its_evidence_arrives_counts_once(
    admin: Admin, control_plane: RunningControlPlane
) -> None:
    tenant_id = await _tenant(admin, budget_day_nanos=10_000)
    first = await _lease(control_plane, "n1/0", _ask(tenant_id, 500))
    await _lease(control_plane, "n1/0", _ask(tenant_id, 0, overspent=300, window=first.window))
    assert await _spent(admin) == 800
    chain = _Chain(control_plane, "n1/0", tenant_id)
    await chain.ship(chain.record(800))
    assert await _spent(admin) == 800
    await _lease(control_plane, "n1/0", _ask(tenant_id, 0))
    assert await _spent(admin) == 800


async def test_interleaved_reports_of_several_nodes_count_each_charge_once(
    admin: Admin, control_plane: RunningControlPlane
) -> None:
    tenant_id = await _tenant(admin, budget_day_nanos=10_000)
    n1, n2 = _Chain(control_plane, "n1/0", tenant_id), _Chain(control_plane, "n2/0", tenant_id)
    w = (await _lease(control_plane, "n1/0", _ask(tenant_id, 500))).window
    await _lease(control_plane, "n2/0", _ask(tenant_id, 500))
    # Each spends its 500 and ships it; n1 then 300 past it, shipped in two batches around
    # its report (the first before it: evidence ahead of every lease).
    await n1.ship(n1.record(500))
    await n2.ship(n2.record(500))
    a = n1.record(200)
    b = n1.record(100)
    await n1.ship(a)
    await _lease(control_plane, "n2/0", _ask(tenant_id, 0))  # a lease between
    await _lease(control_plane, "n1/0", _ask(tenant_id, 0, overspent=300, window=w))
    assert await _spent(admin) == 800 + 500
    await n1.ship(a, b)  # a resent, b new
    # n2: reports 400 past its 500 first, its evidence later, part of it lagging.
    await _lease(control_plane, "n2/0", _ask(tenant_id, 0, overspent=400, window=w))
    assert await _spent(admin) == 800 + 900
    await n2.ship(n2.record(300))
    assert await _spent(admin) == 800 + 900  # n2's evidence lags: its leases' count stands
    await _lease(control_plane, "n1/0", _ask(tenant_id, 0))
    await n2.ship(n2.record(100))
    await _lease(control_plane, "n2/0", _ask(tenant_id, 0))
    await _lease(control_plane, "n1/0", _ask(tenant_id, 0))
    assert await _spent(admin) == 800 + 900


async def test_evidence_ahead_of_a_nodes_leases_counts_and_what_it_is_granted_comes_on_top(
    admin: Admin, control_plane: RunningControlPlane
) -> None:
    """The larger of the two per node: a node killed past what it held never reports it (its
    evidence does), and a node failing open through an outage spent without leases."""
    tenant_id = await _tenant(admin, budget_day_nanos=2000)
    killed = _Chain(control_plane, "k/0", tenant_id)
    w = (await _lease(control_plane, "k/0", _ask(tenant_id, 300))).window
    await killed.ship(killed.record(700))  # killed: 400 past its lease, never reported
    held = await _lease(control_plane, "n1/0", _ask(tenant_id, 200))
    assert held.granted == 200
    assert await _spent(admin) == 700 + 200  # n1 holds 200: not the same spend as k's
    # n1 hands back 100 and asks for the rest of the budget: 2000 - 700 - 100.
    rest = await _lease(control_plane, "n1/0", _ask(tenant_id, 5000, returned=100, window=w))
    assert (rest.granted, rest.exhausted) == (1200, True)
    assert await _spent(admin) == 2000


async def test_an_idle_holder_whose_evidence_covers_its_count_leaves_the_row_and_counts_the_same(
    admin: Admin, control_plane: RunningControlPlane
) -> None:
    """A window's row holds the holders that count, not every worker that leased in a month."""
    tenant_id = await _tenant(admin, budget_day_nanos=10_000)
    stopped, killed = _Chain(control_plane, "n1/0", tenant_id), _Chain(control_plane, "n2/0", tenant_id)
    await _lease(control_plane, "n1/0", _ask(tenant_id, 500))
    await stopped.ship(stopped.record(500))  # spent all it held
    await _lease(control_plane, "n2/0", _ask(tenant_id, 300))
    await killed.ship(killed.record(100))  # killed holding 200: counted as spent
    assert await _spent(admin) == 800
    # An hour and more without a lease from either (what that idleness leaves in the row).
    sql_execute(
        control_plane.database_url,
        "UPDATE quota_state SET holders = (SELECT jsonb_object_agg(key, jsonb_build_array(value->0, 0))"
        " FROM jsonb_each(holders)) WHERE right(scope, 4) = '/day'",
    )
    await _lease(control_plane, "n3/0", _ask(tenant_id, 0))
    [(holders,)] = sql_rows(
        control_plane.database_url, "SELECT holders FROM quota_state WHERE right(scope, 4) = '/day'"
    )
    assert isinstance(holders, dict)
    assert sorted(holders) == ["n2/0", "n3/0"]
    assert await _spent(admin) == 800
    # Back, it counts on top of what its evidence says it spent.
    assert (await _lease(control_plane, "n1/0", _ask(tenant_id, 100))).granted == 100
    assert await _spent(admin) == 900
