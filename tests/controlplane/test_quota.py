"""The quota ledger on real PostgreSQL: never more than the limit, whoever asks, however
many control-plane replicas compute leases at once."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from controlplane.api.quota import MAX_LEASES_PER_NODE
from controlplane.errors import InvalidArgument
from controlplane.evidence.ingest import Batch
from controlplane.identity.ca import serial_hex
from controlplane.quota import QuotaLedger
from controlplane.services.base import Caller
from controlplane.services.groups import GroupSpec
from dataplane.config.model import LimitsConfig, TenantConfig
from dataplane.errors import LimitExceeded
from dataplane.evidence.records import GENESIS_HASH, seal
from dataplane.identity import IdentityFiles
from dataplane.quota import QuotaLeaser, Quotas
from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.config.v1 import quota_pb2, quota_pb2_grpc
from signalbox.tls import aio_channel
from tests.controlplane.conftest import Admin
from tests.fixtures.postgres import RunningControlPlane
from tests.helpers import eventually

RPM = quota_pb2.QUOTA_KIND_REQUESTS_PER_MINUTE
DAY = quota_pb2.QUOTA_KIND_BUDGET_DAY


def _ask(
    tenant_id: str, kind: int, want: int, returned: int = 0, window: str = "", key: str = ""
) -> quota_pb2.QuotaAsk:
    return quota_pb2.QuotaAsk(
        scope=quota_pb2.QuotaScope(tenant_id=tenant_id, api_key_id=key, kind=kind),  # type: ignore[arg-type]
        want=want,
        returned=returned,
        returned_window=window,
    )


async def _tenant(admin: Admin, **limits: int) -> str:
    tenant = await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="acme"))
    await admin.SetLimits(admin_pb2.SetLimitsRequest(tenant="acme", **limits))  # type: ignore[arg-type]
    return str(tenant.id)


async def test_concurrent_leases_never_hand_out_more_than_the_bucket(
    admin: Admin, control_plane: RunningControlPlane
) -> None:
    tenant_id = await _tenant(admin, requests_per_minute=600)
    assert control_plane.cp.quota is not None
    # A second ledger on the same database, as another control-plane replica would have.
    replicas = [control_plane.cp.quota, QuotaLedger(control_plane.cp.quota._sessions)]
    grants = await asyncio.gather(*(replicas[i % 2].lease([_ask(tenant_id, RPM, 100)]) for i in range(20)))
    total = sum(g[0].granted for g in grants)
    # A full bucket is one minute of the limit; 20 concurrent asks of 100 get it, and at most
    # the few requests' worth refilled while they ran.
    assert 600 <= total <= 610, total
    assert grants[-1][0].limit == 600


async def test_a_budget_is_leased_up_to_its_limit_and_stays_exhausted_for_its_window(
    admin: Admin, control_plane: RunningControlPlane
) -> None:
    tenant_id = await _tenant(admin, budget_day_nanos=1000)
    ledger = control_plane.cp.quota
    assert ledger is not None
    first = (await ledger.lease([_ask(tenant_id, DAY, 700)]))[0]
    assert (first.granted, first.exhausted) == (700, False)
    # Handed back before the window is used up: it comes back.
    back = (await ledger.lease([_ask(tenant_id, DAY, 0, returned=100, window=first.window)]))[0]
    assert (back.granted, back.exhausted) == (0, False)
    second = (await ledger.lease([_ask(tenant_id, DAY, 700)]))[0]
    assert (second.granted, second.exhausted) == (400, True)
    # Handed back once it is used up: counted as spent, the window stays exhausted (a hand-back
    # that reopened it made every holder start over, and a budget leak a request a cycle).
    back = (await ledger.lease([_ask(tenant_id, DAY, 0, returned=200, window=first.window)]))[0]
    assert (back.granted, back.exhausted) == (0, True)
    again = (await ledger.lease([_ask(tenant_id, DAY, 100)]))[0]
    assert (again.granted, again.exhausted) == (0, True)
    info = await admin.GetLimits(admin_pb2.GetLimitsRequest(tenant="acme"))
    assert info.spent_day_nanos == 1000
    # A raised limit reopens it.
    await admin.SetLimits(admin_pb2.SetLimitsRequest(tenant="acme", budget_day_nanos=1500))
    raised = (await ledger.lease([_ask(tenant_id, DAY, 100)]))[0]
    assert (raised.granted, raised.exhausted) == (100, False)


async def test_scopes_without_a_limit_get_nothing_and_bad_asks_name_the_field(
    admin: Admin, control_plane: RunningControlPlane
) -> None:
    tenant_id = await _tenant(admin, requests_per_minute=60)
    ledger = control_plane.cp.quota
    assert ledger is not None
    other = (await ledger.lease([_ask(tenant_id, DAY, 5)]))[0]
    assert (other.granted, other.limit) == (0, 0)
    with pytest.raises(InvalidArgument, match=r"asks\[1\]\.scope\.tenant_id: must be an id"):
        await ledger.lease([_ask(tenant_id, RPM, 1), _ask("acme", RPM, 1)])
    with pytest.raises(InvalidArgument, match=r"asks\[0\]\.scope\.kind: unknown kind 9"):
        await ledger.lease([_ask(tenant_id, 9, 1)])


async def test_a_node_leases_only_for_tenants_its_group_sees(
    admin: Admin, control_plane: RunningControlPlane
) -> None:
    tenant_id = await _tenant(admin, requests_per_minute=600)
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="other"))
    assert control_plane.cp.groups is not None
    await control_plane.cp.groups.create(Caller("", "tests"), GroupSpec("others", tenants=("other",)))
    ledger = control_plane.cp.quota
    assert ledger is not None
    hidden = (await ledger.lease([_ask(tenant_id, RPM, 5)], "n1", "others"))[0]
    assert (hidden.granted, hidden.limit) == (0, 0)
    unknown = (await ledger.lease([_ask(tenant_id, RPM, 5)], "n1", "no-such-group"))[0]
    assert (unknown.granted, unknown.limit) == (0, 0)
    seen = (await ledger.lease([_ask(tenant_id, RPM, 5)], "n2", "default"))[0]
    assert (seen.granted, seen.limit) == (5, 600)


async def test_each_worker_of_a_node_gets_its_own_fair_share(
    admin: Admin, control_plane: RunningControlPlane
) -> None:
    """Holders are workers (``<node>/<i>``): a quiet worker's share is the refill since *its*
    last lease. Keyed by node, a busy sibling's frequent leases would reset that clock and
    starve it (its share: the refill since the sibling's last lease, a few units)."""
    tenant_id = await _tenant(admin, requests_per_minute=6000)  # 100 per second
    ledger = control_plane.cp.quota
    assert ledger is not None
    # Empty the bucket; both workers are holders from here on.
    assert (await ledger.lease([_ask(tenant_id, RPM, 10**6)], "n/0"))[0].granted >= 6000
    await ledger.lease([_ask(tenant_id, RPM, 1)], "n/1")
    quiet_since = asyncio.get_running_loop().time()
    # The busy worker leases every 50 ms for half a second (the time passing is the test).
    while asyncio.get_running_loop().time() - quiet_since < 0.5:
        await asyncio.sleep(0.05)
        await ledger.lease([_ask(tenant_id, RPM, 10**6)], "n/0")
    quiet = (await ledger.lease([_ask(tenant_id, RPM, 10**6)], "n/1"))[0]
    # Half (two holders) of 100/s over >= 0.5 s; keyed by node it would be ~100/s x 50 ms.
    assert quiet.granted >= 20, quiet.granted


async def test_a_node_holds_a_bounded_number_of_leases_in_flight(
    admin: Admin, control_plane: RunningControlPlane, private_tmp: Path
) -> None:
    """Each Lease is a database transaction: one node opening connections of 100 calls each
    held the replica's database pool, and every other node's leases waited with it."""
    tenant_id = await _tenant(admin, requests_per_minute=600)
    busy = await control_plane.enroll("busy", private_tmp / "busy")
    calm = await control_plane.enroll("calm", private_tmp / "calm")
    assert control_plane.cp.quota is not None
    await control_plane.cp.quota.lease([_ask(tenant_id, RPM, 1)], "busy/0")  # its row exists
    request = quota_pb2.LeaseRequest(holder="busy/0", asks=[_ask(tenant_id, RPM, 1)])
    extra = 4
    engine = sa.create_engine(control_plane.database_url, poolclass=sa.NullPool)
    try:
        async with (
            aio_channel(control_plane.node_address, busy) as one,
            aio_channel(control_plane.node_address, busy) as two,
        ):
            with engine.connect() as conn:
                # Every lease of the tenant waits for this row lock: they stay in flight.
                held = conn.begin()
                conn.execute(sa.text("SELECT * FROM quota_state FOR UPDATE"))
                calls = [
                    asyncio.ensure_future(
                        quota_pb2_grpc.QuotaServiceStub((one, two)[i % 2]).Lease(request, timeout=60)
                    )
                    for i in range(MAX_LEASES_PER_NODE + extra)
                ]

                def refused() -> list[BaseException]:
                    return [c.exception() for c in calls if c.done() and c.exception() is not None]

                await eventually(
                    lambda: len(refused()) == extra, timeout=30, message="the calls past the cap"
                )
                for exc in refused():
                    assert isinstance(exc, grpc.aio.AioRpcError)
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert exc.details() == f"node busy: at most {MAX_LEASES_PER_NODE} quota leases at once"
                # Another node is not held back by this one's calls.
                async with aio_channel(control_plane.node_address, calm) as channel:
                    quiet = quota_pb2.LeaseRequest(holder="calm/0")
                    await quota_pb2_grpc.QuotaServiceStub(channel).Lease(quiet, timeout=10)
                held.rollback()
            granted = await asyncio.gather(*calls, return_exceptions=True)
            assert sum(isinstance(g, quota_pb2.LeaseResponse) for g in granted) == MAX_LEASES_PER_NODE
    finally:
        engine.dispose()
    # Once they ended, the node leases again.
    async with aio_channel(control_plane.node_address, busy) as channel:
        await quota_pb2_grpc.QuotaServiceStub(channel).Lease(request, timeout=10)


async def test_a_budget_counts_what_shipped_evidence_says_was_spent(
    admin: Admin, control_plane: RunningControlPlane
) -> None:
    """Leases are the timely count; evidence the authoritative one. A node killed while it
    held quota never settles, but its records still arrive: the ledger never counts a budget
    as less used than they say, and each record counts once however often it is shipped."""
    tenant_id = await _tenant(admin, budget_day_nanos=1000)
    ledger, ingest = control_plane.cp.quota, control_plane.cp.evidence
    assert ledger is not None
    assert ingest is not None
    # The leases are the spending worker's (``spender/0``, its evidence chain): a worker's
    # count is the larger of its leases' and its evidence's; another worker's would add.
    first = (await ledger.lease([_ask(tenant_id, DAY, 100)], "spender/0"))[0]
    assert (first.granted, first.exhausted) == (100, False)

    now, prev, lines = time.time(), GENESIS_HASH, []
    for seq, nanos in enumerate((300, 300, 0), start=1):
        line = seal(
            {
                "seq": seq,
                "prev_hash": prev,
                "ts": now,
                "record_id": f"{seq:032x}",
                "node_id": "spender",
                "chain_id": "spender/0",
                "tenant_id": tenant_id,
                "api_key_id": "",
                "cost": {"currency": "USD", "total_nanos": nanos},
            }
        )
        prev = json.loads(line)["hash"]
        lines.append(line)
    for _ in range(2):  # shipped twice (at-least-once delivery): counted once
        ack = await ingest.ingest("spender", Batch("spender/0", lines))
        assert ack.refused is None
    info = await admin.GetLimits(admin_pb2.GetLimitsRequest(tenant="acme"))
    assert info.spent_day_nanos == 600  # evidence (600) over the leases' count (100)

    second = (await ledger.lease([_ask(tenant_id, DAY, 1000)], "spender/0"))[0]
    assert (second.granted, second.exhausted) == (400, True)
    info = await admin.GetLimits(admin_pb2.GetLimitsRequest(tenant="acme"))
    assert info.spent_day_nanos == 1000


async def test_a_node_leases_no_key_quota_of_a_tenant_its_group_does_not_see(
    admin: Admin, control_plane: RunningControlPlane
) -> None:
    tenant_id = await _tenant(admin)
    key = (await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant="acme", name="ci"))).key
    await admin.SetLimits(admin_pb2.SetLimitsRequest(tenant="acme", key_id=key.id, requests_per_minute=600))
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="other"))
    assert control_plane.cp.groups is not None
    await control_plane.cp.groups.create(Caller("", "tests"), GroupSpec("others", tenants=("other",)))
    ledger = control_plane.cp.quota
    assert ledger is not None
    # A node of "others" names acme's key: it must drain nothing the nodes serving acme rely on.
    hidden = (await ledger.lease([_ask(tenant_id, RPM, 600, key=key.id)], "n1", "others"))[0]
    assert (hidden.granted, hidden.limit) == (0, 0)
    seen = (await ledger.lease([_ask(tenant_id, RPM, 600, key=key.id)], "n2", "default"))[0]
    assert (seen.granted, seen.limit) == (600, 600)


async def test_evidence_from_a_node_of_another_group_spends_none_of_a_tenants_budget(
    admin: Admin, control_plane: RunningControlPlane, private_tmp: Path
) -> None:
    """Spend counted from evidence is a floor under every node's budget lease: a node may only
    raise it for tenants its group serves, or one node of any group could exhaust any budget."""
    tenant_id = await _tenant(admin, budget_day_nanos=1000)
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="other"))
    assert control_plane.cp.groups is not None
    await control_plane.cp.groups.create(Caller("", "tests"), GroupSpec("others", tenants=("other",)))
    await control_plane.enroll("outsider", private_tmp / "outsider", group="others")
    certificate = IdentityFiles(private_tmp / "outsider").certificate()
    assert certificate is not None
    serial = serial_hex(certificate)
    ingest = control_plane.cp.evidence
    assert ingest is not None
    line = seal(
        {
            "seq": 1,
            "prev_hash": GENESIS_HASH,
            "ts": time.time(),
            "record_id": f"{1:032x}",
            "node_id": "outsider",
            "chain_id": "outsider/0",
            "tenant_id": tenant_id,
            "api_key_id": "",
            "cost": {"currency": "USD", "total_nanos": 1000},
        }
    )
    ack = await ingest.ingest("outsider", Batch("outsider/0", [line]), serial=serial)
    assert (ack.refused, ack.stored) == (None, 1)
    info = await admin.GetLimits(admin_pb2.GetLimitsRequest(tenant="acme"))
    assert info.spent_day_nanos == 0
    ledger = control_plane.cp.quota
    assert ledger is not None
    grant = (await ledger.lease([_ask(tenant_id, DAY, 1000)], "n1", "default"))[0]
    assert (grant.granted, grant.exhausted) == (1000, True)


@pytest.mark.parametrize("skew_days", [-20_000, 2])
async def test_an_exhausted_budget_refuses_until_its_window_ends_by_the_ledgers_clock(
    admin: Admin, control_plane: RunningControlPlane, private_tmp: Path, skew_days: int
) -> None:
    """A node took the end of a window the ledger reported used up from its own wall clock.
    One booted at 1970 (-20,000 days) refused for 55 years (and said so in ``retry-after``);
    one two days ahead found the window already over and served from what it held. The grant
    now says how long the window has left by the ledger's clock, counted down on the node's
    monotonic clock."""
    tenant_id = await _tenant(admin, budget_day_nanos=1000)
    tenant = TenantConfig(tenant_id, "acme", limits=LimitsConfig(budget_day_nanos=1000))
    tls = await control_plane.enroll("skewed-1", private_tmp / "skewed-1")
    quotas = Quotas()
    quotas.wall = lambda: time.time() + skew_days * 86_400
    leaser = QuotaLeaser(quotas, control_plane.node_address, tls, holder="skewed-1/0")
    assert quotas.admit(tenant, "", None, 0, 600) is not None  # on credit, before the first lease
    async with aio_channel(control_plane.node_address, tls) as channel:
        await leaser.round(quota_pb2_grpc.QuotaServiceStub(channel))
    # Granted the whole budget (600 of it the credit): 400 held, and the window is used up.
    (bucket,) = quotas.buckets.values()
    assert (bucket.holding, bucket.exhausted) == (400, True)
    with pytest.raises(LimitExceeded) as refused:
        quotas.admit(tenant, "", None, 0, 300)
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    left = (midnight - datetime.now(UTC)).total_seconds()
    assert left - 5 <= refused.value.retry_after <= left + 5, refused.value.retry_after
