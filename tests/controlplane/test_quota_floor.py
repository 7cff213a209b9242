"""What shipped evidence says was spent stays a floor under a budget, also when quota is
handed back in the same lease.

The ledger raised ``used`` to the evidence's count, then took the hand-back off that: a node
that spent more than its leases said (failing open through an outage, at the rate of its last
leases) and then handed back what it still held, or any hand-back while evidence was ahead of
the leases, brought the count below what had been spent, and the ledger granted the
difference again: the budget went past its limit by what was handed back."""

from __future__ import annotations

import time

from controlplane.evidence.ingest import Batch
from dataplane.evidence.records import GENESIS_HASH, seal
from signalbox.api.admin.v1 import admin_pb2
from tests.controlplane.conftest import Admin
from tests.controlplane.test_quota import DAY, _ask, _tenant
from tests.fixtures.postgres import RunningControlPlane


async def test_a_hand_back_never_takes_a_budget_below_what_evidence_says_was_spent(
    admin: Admin, control_plane: RunningControlPlane
) -> None:
    tenant_id = await _tenant(admin, budget_day_nanos=1000)
    ledger, ingest = control_plane.cp.quota, control_plane.cp.evidence
    assert ledger is not None
    assert ingest is not None
    first = (await ledger.lease([_ask(tenant_id, DAY, 500)], "n1/0"))[0]
    assert (first.granted, first.exhausted) == (500, False)
    # The node's records say 800 was spent (300 more than it leased: it failed open through
    # an outage), and it hands back the 300 it still holds.
    line = seal(
        {
            "seq": 1,
            "prev_hash": GENESIS_HASH,
            "ts": time.time(),
            "record_id": f"{1:032x}",
            "node_id": "n1",
            "chain_id": "n1/0",
            "tenant_id": tenant_id,
            "api_key_id": "",
            "cost": {"currency": "USD", "total_nanos": 800},
        }
    )
    ack = await ingest.ingest("n1", Batch("n1/0", [line]))
    assert ack.refused is None
    back = (await ledger.lease([_ask(tenant_id, DAY, 1000, returned=300, window=first.window)], "n1/0"))[0]
    # 800 was spent: 200 of the budget is left, no more.
    assert back.granted <= 200, back
    assert back.exhausted
    info = await admin.GetLimits(admin_pb2.GetLimitsRequest(tenant="acme"))
    assert info.spent_day_nanos >= 800 + back.granted
