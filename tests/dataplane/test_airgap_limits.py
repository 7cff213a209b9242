"""An air-gapped node (a pinned snapshot, no control plane) enforces its snapshot's rate
limits and budgets from its own ledger (``dataplane.quota.local``): refusals on both doors,
budgets persisted in the data dir across restarts, a corrupt or missing budgets file logged
and recounted from the node's own evidence."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.app import DataPlaneNode
from dataplane.evidence.log import chain_files, log_path
from dataplane.evidence.records import read_records
from dataplane.quota import Kind
from dataplane.quota.leaser import IDLE_ROUNDS
from dataplane.quota.local import BUDGETS_FILE, QUOTA_DIR, LocalLedger
from signalbox.api.config.v1 import quota_pb2, snapshot_pb2
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from tests.dataplane.conftest import API_KEY, AUTH, NodeFactory, chat, envelope, pinned_serve_args, snapshot
from tests.dataplane.test_workers import NODE, free_port, workers_up
from tests.helpers import eventually

LEASE = 0.1


def _pin(path: Path, key: Ed25519PrivateKey, base_url: str, limits: snapshot_pb2.Limits) -> Path:
    snap = snapshot(1, base_url)
    next(t for t in snap.tenants if t.id == "t-acme").limits.CopyFrom(limits)
    path.write_bytes(envelope(snap, key).SerializeToString())
    return path


async def _pinned(start_node: NodeFactory, pin: Path, data_dir: Path) -> DataPlaneNode:
    return await start_node(
        snapshot_file=pin, data_dir=data_dir, http_listen="127.0.0.1:0", quota_lease_interval=LEASE
    )


async def _infer(stub: infer_pb2_grpc.InferServiceStub, **fields: Any) -> grpc.aio.AioRpcError | None:
    try:
        await stub.Infer(chat(**fields), metadata=AUTH, timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc
    return None


async def test_an_air_gapped_node_refuses_over_its_rate_on_both_doors_with_retry_after(
    start_node: NodeFactory, tmp_path: Path, signing_key: Ed25519PrivateKey, simulator: Any
) -> None:
    # 6 per minute: a full bucket of 6, then one every 10 s: the node is the whole group.
    pin = _pin(
        tmp_path / "site.snapshot",
        signing_key,
        simulator.base_url,
        snapshot_pb2.Limits(requests_per_minute=6),
    )
    node = await _pinned(start_node, pin, tmp_path / "node")
    assert node.ledger is not None
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        assert await _infer(stub) is None  # on credit, and the first lease follows
        assert node.leaser is not None
        await eventually(lambda: node.leaser is not None and node.leaser.rounds > 0, message="a first lease")
        outcomes = [await _infer(stub) for _ in range(12)]
    served = 1 + sum(o is None for o in outcomes)
    # At most the bucket's 6, and what refilled while the test ran (one per 10 s). (Fewer
    # when a loaded machine delays a lease: a node refuses while its next lease is pending.)
    assert served <= 7, served
    refused = next(o for o in outcomes if o is not None)
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (refused.details() or "").startswith("tenant acme requests per minute exceeded"), refused.details()
    retry = dict(refused.trailing_metadata() or ()).get("retry-after")
    assert retry is not None
    assert int(str(retry)) >= 1

    # The HTTP door too. A slow machine may take past the next refill (10 s) to get here: the
    # request that takes it is served, and the one after it is refused.
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.post(
                f"http://{node.http_address}/v1/chat/completions",
                json={"model": "sim-fast", "messages": [{"role": "user", "content": "hi"}]},
                headers={"authorization": f"Bearer {API_KEY}"},
            ) as response:
                status, text, headers = response.status, await response.text(), response.headers
            if status != 200:
                break
        assert status == 429, text
        assert int(headers["retry-after"]) >= 1
        assert "tenant acme requests per minute exceeded" in text


async def test_an_air_gapped_budget_survives_a_restart_and_a_lost_file_is_recounted_from_evidence(
    start_node: NodeFactory,
    tmp_path: Path,
    signing_key: Ed25519PrivateKey,
    simulator: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A request reserves its worst case (10 max output tokens and its input at the dearest
    # candidate's prices: about 114,000 nano-USD) before dispatch: a budget of a few requests
    # as they settle. (One dearer than the whole budget is refused outright: OverBudget.)
    budget = 200_000
    pin = _pin(
        tmp_path / "site.snapshot",
        signing_key,
        simulator.base_url,
        snapshot_pb2.Limits(budget_day_nanos=budget),
    )
    data_dir = tmp_path / "node"
    params = infer_pb2.GenerationParams(max_output_tokens=10)
    node = await _pinned(start_node, pin, data_dir)
    assert node.ledger is not None
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        refused = None
        for _ in range(100):
            # Until the ledger has granted the whole budget and a request is refused: a
            # refusal while a lease is pending (a loaded machine) is not the end of it.
            refused = await _infer(stub, params=params)
            if refused is not None and node.ledger.spent("t-acme", "", Kind.BUDGET_DAY) > budget - 50_000:
                break
    assert refused is not None, "the budget never ran out"
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (refused.details() or "").startswith("tenant acme budget per day exceeded"), refused.details()
    retry = dict(refused.trailing_metadata() or ()).get("retry-after")
    assert retry is not None
    assert int(str(retry)) >= 1
    assert node.ledger is not None
    spent = node.ledger.spent("t-acme", "", Kind.BUDGET_DAY)
    assert spent > budget - 50_000, spent
    await node.stop(0)

    path = data_dir / QUOTA_DIR / BUDGETS_FILE
    stored = json.loads(path.read_text())
    assert [(b["tenant_id"], b["used"]) for b in stored["budgets"]] == [("t-acme", spent)]
    assert path.stat().st_mode & 0o777 == 0o600

    # Restarted: the day's spend is still counted; the one request a never-leased bucket
    # admits on credit at most, then refusals.
    node = await _pinned(start_node, pin, data_dir)
    assert node.ledger is not None
    assert node.ledger.spent("t-acme", "", Kind.BUDGET_DAY) == spent
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        outcomes = [await _infer(stub, params=params) for _ in range(5)]
    assert sum(o is None for o in outcomes) <= 1, outcomes
    assert all(
        o is None or (o.details() or "").startswith("tenant acme budget per day exceeded") for o in outcomes
    )
    await node.stop(0)

    # What the node's evidence says acme spent today: what a lost budgets file is recounted to.
    recorded = sum(
        (r.get("cost") or {}).get("total_nanos", 0)
        for chain in chain_files(data_dir)
        for r in read_records(chain)
        if r.get("tenant_id") == "t-acme"
    )
    assert 0 < recorded <= spent

    # A file that does not parse: logged, kept aside, and the period recounted.
    path.write_bytes(b'{"format": 1, "budgets": [{"tenant_id": 7')
    with caplog.at_level(logging.WARNING, logger="signalbox.dataplane.quota"):
        node = await _pinned(start_node, pin, data_dir)
    assert node.ledger is not None
    assert node.ledger.spent("t-acme", "", Kind.BUDGET_DAY) == recorded
    assert any("is not JSON; the unreadable file is kept as" in r.getMessage() for r in caplog.records)
    assert any(
        "recounted this period's spend from the node's evidence" in r.getMessage() for r in caplog.records
    )
    assert (data_dir / QUOTA_DIR / (BUDGETS_FILE + ".corrupt")).exists()
    await node.stop(0)
    # The recount was written back: the next start reads it.
    # (The tenant's and its key's day and month alike: a budget set later finds them counted.)
    written = {
        (b["tenant_id"], b["api_key_id"], b["kind"]): b["used"]
        for b in json.loads(path.read_text())["budgets"]
    }
    assert written == {
        ("t-acme", key, int(kind)): recorded
        for key in ("", "k-acme")
        for kind in (Kind.BUDGET_DAY, Kind.BUDGET_MONTH)
    }

    # A deleted file: recounted alike.
    path.unlink()
    node = await _pinned(start_node, pin, data_dir)
    assert node.ledger is not None
    assert node.ledger.spent("t-acme", "", Kind.BUDGET_DAY) == recorded
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        assert await _infer(stub, params=params) is None


async def test_workers_of_an_air_gapped_node_hold_the_limit_for_the_node_as_a_whole(
    tmp_path: Path, trust_key: Path, signing_key: Ed25519PrivateKey, simulator: Any
) -> None:
    # 30 per minute: a bucket of 30, then one every 2 s, for the node whatever its workers.
    # Two workers each counting alone would serve 60 and more.
    snap = snapshot(3, simulator.base_url, deployment="")
    snap.providers[0].location = snapshot_pb2.PROVIDER_LOCATION_SITE
    snap.providers[0].site = "lab"
    next(t for t in snap.tenants if t.id == "t-acme").limits.requests_per_minute = 30
    pin = tmp_path / "site.snapshot"
    pin.write_bytes(envelope(snap, signing_key).SerializeToString())
    data_dir = tmp_path / "node"
    http_port = free_port()
    args = pinned_serve_args(pin, trust_key, data_dir, "--node-id", NODE, "--workers", "2")
    args += ["--listen", f"127.0.0.1:{free_port()}", "--http-listen", f"127.0.0.1:{http_port}"]
    args += ["--quota-lease-ms", "100"]
    async with workers_up(args, 2) as process:
        started = time.monotonic()
        statuses: list[int] = []
        # A new connection per request: the kernel spreads them over the two workers.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            for i in range(90):
                async with session.post(
                    f"http://127.0.0.1:{http_port}/v1/chat/completions",
                    json={"model": "sim-fast", "messages": [{"role": "user", "content": f"hi {i}"}]},
                    headers={"authorization": f"Bearer {API_KEY}"},
                ) as response:
                    statuses.append(response.status)
        elapsed = time.monotonic() - started
        served = statuses.count(200)
        assert set(statuses) == {200, 429}, set(statuses)
        # At most the bucket, its refill while the test ran, and one request on credit per
        # worker. (Fewer when a worker still holds some as the other is refused, or a loaded
        # machine delays a lease.)
        assert served <= 30 + elapsed / 2 + 2, (served, elapsed)

        def chains() -> dict[str, int]:
            counts = {w: sum(1 for _ in read_records(log_path(data_dir, NODE, w))) for w in ("0", "1")}
            assert sum(counts.values()) == len(statuses)
            return counts

        counts = await eventually(chains, message="every request's record")
        assert counts["0"], counts  # both workers took requests
        assert counts["1"], counts
        print(f"served {served} of {len(statuses)} in {elapsed:.1f} s; records per worker {counts}")
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 60) == 0


async def test_a_grant_whose_write_was_given_up_is_on_disk_once_the_node_stops(
    start_node: NodeFactory, tmp_path: Path, signing_key: Ed25519PrivateKey, simulator: Any
) -> None:
    """A Lease call given up (its deadline, the node stopping) cancels the ledger's write of
    what it granted. The write finishes before the cancellation does, so no second write of
    the file races it; and one cancelled before it began is made when the node stops."""
    pin = _pin(
        tmp_path / "site.snapshot",
        signing_key,
        simulator.base_url,
        snapshot_pb2.Limits(budget_day_nanos=10**9),
    )
    data_dir = tmp_path / "node"
    node = await _pinned(start_node, pin, data_dir)
    ledger = node.ledger
    assert ledger is not None
    path = data_dir / QUOTA_DIR / BUDGETS_FILE
    ask = quota_pb2.QuotaAsk(
        scope=quota_pb2.QuotaScope(tenant_id="t-acme", kind=quota_pb2.QUOTA_KIND_BUDGET_DAY), want=1_000
    )

    def on_disk() -> int:
        stored = json.loads(path.read_text())["budgets"]
        return sum(b["used"] for b in stored if b["tenant_id"] == "t-acme" and b["kind"] == Kind.BUDGET_DAY)

    before = on_disk()
    # Cancelled once its write is under way: it ends only when the file is written.
    (granted,) = ledger.lease([ask], f"{NODE}/0")
    writing = asyncio.create_task(ledger.persist())
    await asyncio.sleep(0)  # into the write
    writing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writing
    assert on_disk() == before + granted.granted
    # Cancelled before it began: nothing written, and the stop writes it.
    (again,) = ledger.lease([ask], f"{NODE}/0")
    never = asyncio.create_task(ledger.persist())
    never.cancel()
    with pytest.raises(asyncio.CancelledError):
        await never
    assert on_disk() == before + granted.granted
    await node.stop(0)
    assert on_disk() == before + granted.granted + again.granted


async def test_an_exhausted_budget_stays_exhausted_through_idle_rounds_and_hand_backs(
    start_node: NodeFactory, tmp_path: Path, signing_key: Ed25519PrivateKey, simulator: Any
) -> None:
    """Spent out, then idle for more than ``IDLE_ROUNDS`` lease periods: the next request is
    still refused, and nothing past the budget was ever granted. (It used to be served on
    credit each idle cycle: the bucket handed its leftover back, the ledger then reported room
    again, the idle bucket was forgotten and rebuilt as a new one, which admits on credit.)"""
    budget = 200_000
    pin = _pin(
        tmp_path / "site.snapshot",
        signing_key,
        simulator.base_url,
        snapshot_pb2.Limits(budget_day_nanos=budget),
    )
    params = infer_pb2.GenerationParams(max_output_tokens=10)
    node = await start_node(
        snapshot_file=pin, data_dir=tmp_path / "node", http_listen="127.0.0.1:0", quota_lease_interval=0.02
    )
    ledger, leaser, quotas = node.ledger, node.leaser, node.quotas
    assert ledger is not None
    assert leaser is not None
    assert quotas is not None
    scope = ("t-acme", "", Kind.BUDGET_DAY)
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        for _ in range(100):
            refused = await _infer(stub, params=params)
            if refused is not None and ledger.spent("t-acme", "", Kind.BUDGET_DAY) > budget - 50_000:
                break
        else:
            pytest.fail("the budget never ran out")
        spent = ledger.spent("t-acme", "", Kind.BUDGET_DAY)
        bucket = quotas.buckets[scope]
        for cycle in range(2):

            def idle(bucket: Any = bucket) -> bool:
                state = leaser._states.get(bucket)
                # None: the bucket was dropped as idle (a new one would be built).
                return state is None or state.idle > IDLE_ROUNDS

            await eventually(idle, timeout=30, message=f"idle cycle {cycle}")
            again = await _infer(stub, params=params)
            assert again is not None, f"served on credit after idle cycle {cycle}"
            assert again.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert (again.details() or "").startswith("tenant acme budget per day exceeded"), again.details()
            bucket = quotas.buckets[scope]
    # Nothing granted past the budget, and nothing handed back reopened it.
    assert ledger.spent("t-acme", "", Kind.BUDGET_DAY) >= spent
    assert ledger.spent("t-acme", "", Kind.BUDGET_DAY) <= budget


async def test_a_request_dearer_than_the_whole_budget_is_refused_as_such_without_retry_after(
    start_node: NodeFactory, tmp_path: Path, signing_key: Ed25519PrivateKey, simulator: Any
) -> None:
    """Retrying can never help a request whose worst case is more than the whole budget: it is
    refused as not transient, saying so, with no retry-after (it was "budget per day exceeded"
    with retry-after 1, forever)."""
    pin = _pin(
        tmp_path / "site.snapshot",
        signing_key,
        simulator.base_url,
        snapshot_pb2.Limits(budget_day_nanos=150_000),
    )
    node = await _pinned(start_node, pin, tmp_path / "node")
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        for _ in range(3):  # before and after the first lease alike
            refused = await _infer(stub, params=infer_pb2.GenerationParams(max_output_tokens=2000))
            assert refused is not None
            assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION, refused.details()
            details = refused.details() or ""
            assert details.startswith("tenant acme budget per day: the request's worst case"), details
            assert "is more than the whole budget (150000 nano-USD); lower its max tokens" in details
            assert "retry-after" not in dict(refused.trailing_metadata() or ())
        small = await _infer(stub, params=infer_pb2.GenerationParams(max_output_tokens=10))
        assert small is None, small.details()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://{node.http_address}/v1/chat/completions",
            json={"model": "sim-fast", "max_tokens": 2000, "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": f"Bearer {API_KEY}"},
        ) as response,
    ):
        assert response.status == 422, await response.text()
        assert "retry-after" not in response.headers
        assert "is more than the whole budget" in await response.text()


async def test_the_ledger_waits_for_each_workers_last_lease_at_most_its_timeout(tmp_path: Path) -> None:
    """Worker 0 stops serving the ledger once every worker that leased made its last call (a
    worker that never leased is not waited for), or when the time runs out: then it names
    the workers it did not hear from."""
    ledger = LocalLedger(lambda: None, tmp_path)
    ledger.lease([], "n/0")
    ledger.lease([], "n/1")
    ledger.lease([], "n/0", last=True)
    assert await ledger.last_leases(0.05) == ["n/1"]
    waiting = asyncio.get_running_loop().create_task(ledger.last_leases(30.0))
    await asyncio.sleep(0)  # it waits
    assert not waiting.done()
    ledger.lease([], "n/1", last=True)
    async with asyncio.timeout(5):
        assert await waiting == []
