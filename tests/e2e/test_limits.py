"""Rate limits and budgets across a fleet: a real control plane and three real nodes on
loopback, quota leased over the node port (mutual TLS), the simulated upstream.

Rates are measured over a window of the steady state (after the bucket's burst is spent),
from the times the client sent each request, so a loaded machine slows the test but does not
change what is measured: the control plane refills at limit/60 per second of wall time
whatever the nodes do."""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import pytest

from dataplane.app import DataPlaneNode
from dataplane.evidence.log import log_path
from dataplane.evidence.records import read_records
from dataplane.workers import MAX_WORKERS
from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.api.config.v1 import quota_pb2, quota_pb2_grpc, snapshot_pb2
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from signalbox.shell.simulator import Simulator
from signalbox.tls import aio_channel
from tests.controlplane.conftest import Admin
from tests.dataplane.test_workers import free_port, workers_up
from tests.e2e.conftest import loopback_node
from tests.fixtures.postgres import RunningControlPlane, cp_settings, running_control_plane
from tests.helpers import eventually

TENANT = "acme"
LEASE = 0.25
"""Seconds between a node's leases in these tests (1 s by default)."""
PROMPT = "x" * 400
"""100 input tokens, as the node estimates them and as the simulator counts them."""
BURST = 2.0
"""Seconds of a rate limit a bucket holds (a minute by default): the burst is spent fast."""


@dataclass
class Fleet:
    running: RunningControlPlane
    admin: Admin
    nodes: list[DataPlaneNode]

    async def converged(self, version: int) -> None:
        for node in self.nodes:
            await node.wait_for_version(version, timeout=20)


@pytest.fixture
async def fleet(database_url: str, private_tmp: Path, simulator: Simulator) -> AsyncIterator[Fleet]:
    settings = cp_settings(database_url, private_tmp, limit_burst_seconds=BURST)
    async with AsyncExitStack() as stack:
        running = await stack.enter_async_context(running_control_plane(settings))
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(running.address))
        admin = Admin(admin_pb2_grpc.AdminServiceStub(channel), running.metadata)
        await _seed(admin, simulator)
        nodes = []
        for i in range(3):
            node = await loopback_node(
                running, f"limits-{i + 1}", private_tmp, quota_lease_interval=LEASE, http_listen="127.0.0.1:0"
            )
            await node.start()
            stack.push_async_callback(node.stop)
            nodes.append(node)
        fleet = Fleet(running, admin, nodes)
        await fleet.converged(await admin.latest_version())
        yield fleet


async def _seed(admin: Admin, simulator: Simulator) -> None:
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name=TENANT))
    await admin.CreateProvider(
        admin_pb2.CreateProviderRequest(
            provider=admin_pb2.Provider(
                name="sim", type="simulated", base_url=f"{simulator.base_url}/v1", timeout_ms=10_000
            )
        )
    )
    await admin.CreateModel(
        admin_pb2.CreateModelRequest(
            model=admin_pb2.Model(
                alias="small",
                capabilities=[1],
                # $1 per million input tokens, output free: a request's worst case (estimated
                # before dispatch) and real cost (the simulator's count) are the same.
                input_price_nanos_per_mtok=1_000_000_000,
                deployments=[admin_pb2.Deployment(provider="sim", upstream_model="small-upstream")],
            )
        )
    )
    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant=TENANT, document="default_model: small"))


async def _key(fleet: Fleet, name: str, tenant: str = TENANT) -> tuple[str, str]:
    created = await fleet.admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant=tenant, name=name))
    await fleet.converged(await fleet.admin.latest_version())
    return str(created.key.id), str(created.secret)


async def _set(fleet: Fleet, **fields: object) -> None:
    info = await fleet.admin.SetLimits(admin_pb2.SetLimitsRequest(**fields))  # type: ignore[arg-type]
    await fleet.converged(info.snapshot_version)


@dataclass
class Result:
    sent: float
    node: int
    code: grpc.StatusCode
    details: str = ""
    retry_after: str | None = None
    correlation_id: str = ""


async def _call(
    stub: infer_pb2_grpc.InferServiceStub, secret: str, node: int, cid: str = "", text: str = "hi"
) -> Result:
    request = infer_pb2.InferRequest(
        messages=[infer_pb2.Message(role=infer_pb2.ROLE_USER, content=[infer_pb2.ContentPart(text=text)])],
        params=infer_pb2.GenerationParams(max_output_tokens=16),
        correlation_id=cid,
    )
    sent = time.monotonic()
    try:
        await stub.Infer(request, metadata=(("authorization", f"Bearer {secret}"),), timeout=20)
    except grpc.aio.AioRpcError as exc:
        trailers = dict(exc.trailing_metadata() or ())
        retry = trailers.get("retry-after")
        return Result(sent, node, exc.code(), exc.details() or "", str(retry) if retry else None, cid)
    return Result(sent, node, grpc.StatusCode.OK, correlation_id=cid)


async def _paced(
    nodes: Sequence[DataPlaneNode], secret: str, rates: Sequence[float], seconds: float
) -> list[Result]:
    """Each node gets ``rates[i]`` requests per second for ``seconds``, on an absolute
    schedule (a late send goes at once: the offered load is kept, not the spacing)."""
    results: list[Result] = []
    async with AsyncExitStack() as stack:
        stubs = [
            infer_pb2_grpc.InferServiceStub(
                await stack.enter_async_context(grpc.aio.insecure_channel(node.address))
            )
            for node in nodes
        ]

        async def drive(i: int) -> None:
            start = time.monotonic()
            tasks = []
            n = 0
            while (due := start + n / rates[i]) < start + seconds:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                tasks.append(asyncio.create_task(_call(stubs[i], secret, i)))
                n += 1
            results.extend(await asyncio.gather(*tasks))

        await asyncio.gather(*(drive(i) for i in range(len(nodes))))
    return results


def _served_rate(results: Sequence[Result], start: float, end: float) -> float:
    served = [r for r in results if start <= r.sent < end and r.code == grpc.StatusCode.OK]
    return len(served) / (end - start)


def _leased(node: DataPlaneNode, key_id: str) -> bool:
    quotas = node.quotas
    assert quotas is not None
    return any(b.leased for scope, b in quotas.buckets.items() if scope[1] == key_id)


def _record(node: DataPlaneNode, correlation_id: str) -> dict[str, object]:
    path = log_path(node.settings.data_dir, node.settings.node_id)

    def found() -> dict[str, object]:
        records = [r for r in read_records(path) if r["correlation_id"] == correlation_id]
        assert records, correlation_id
        return records[0]

    return found()


async def test_a_tenant_rate_holds_across_three_nodes_with_80_10_10_traffic(fleet: Fleet) -> None:
    limit = 600  # per minute: 10 per second across the fleet
    await _set(fleet, tenant=TENANT, requests_per_minute=limit)
    _, secret = await _key(fleet, "busy")

    # Offered: twice the limit, 80/10/10. A static split (a third each) would serve
    # 3.3 + 2 + 2 = 7.3/s here; leases move the quiet nodes' share to the busy one.
    warmup, window = 4.0, 16.0
    started = time.monotonic()
    results = await _paced(fleet.nodes, secret, (16.0, 2.0, 2.0), warmup + window)
    begin, end = started + warmup, started + warmup + window

    rate = _served_rate(results, begin, end)
    expected = limit / 60
    per_node = [_served_rate([r for r in results if r.node == i], begin, end) for i in range(3)]
    print(f"fleet {rate:.2f}/s of {expected:.2f}/s; per node " + ", ".join(f"{r:.2f}/s" for r in per_node))
    assert abs(rate - expected) <= 0.1 * expected, f"served {rate:.2f}/s, limit {expected:.2f}/s"
    busy = _served_rate([r for r in results if r.node == 0], begin, end)
    assert busy > 1.5 * expected / 3, f"the busy node served only {busy:.2f}/s: a static split"
    for quiet in (1, 2):
        mine = [r for r in results if r.node == quiet and begin <= r.sent < end]
        served = sum(r.code == grpc.StatusCode.OK for r in mine)
        assert served >= 0.8 * len(mine), f"node {quiet} served {served} of {len(mine)}"

    refused = [r for r in results if r.code != grpc.StatusCode.OK]
    assert refused
    assert {r.code for r in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert all(r.details.startswith("tenant acme requests per minute exceeded") for r in refused), refused[0]
    assert all(r.retry_after is not None and int(r.retry_after) >= 1 for r in refused)


async def test_a_keys_limit_refuses_that_key_only_with_retry_after_and_evidence(fleet: Fleet) -> None:
    limited_id, limited = await _key(fleet, "limited")
    _, other = await _key(fleet, "other")
    await _set(fleet, tenant=TENANT, key_id=limited_id, requests_per_minute=60)  # bucket: 2 requests

    node = fleet.nodes[0]
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        # The node's first request of a limit is served on credit, and its first lease follows.
        assert (await _call(stub, limited, 0, "cid-limited-first")).code == grpc.StatusCode.OK
        await eventually(lambda: _leased(node, limited_id), message="the key's first lease")
        results = [await _call(stub, limited, 0, f"cid-limited-{i}") for i in range(8)]
    refused = [r for r in results if r.code != grpc.StatusCode.OK]
    assert 4 <= len(refused) <= 8, [r.code for r in results]
    first = refused[0]
    assert first.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert first.details.startswith(f"api key {limited_id} of tenant acme requests per minute exceeded")
    assert "sbx_" not in first.details
    assert first.retry_after is not None
    assert int(first.retry_after) >= 1

    # Another key of the same tenant, on every node: unaffected.
    for i, n in enumerate(fleet.nodes):
        async with grpc.aio.insecure_channel(n.address) as channel:
            stub = infer_pb2_grpc.InferServiceStub(channel)
            answers = [await _call(stub, other, i) for _ in range(5)]
        assert [a.code for a in answers] == [grpc.StatusCode.OK] * 5

    record = await eventually(lambda: _record(node, first.correlation_id), message="the refusal's record")
    assert record["limit"] == f"api key {limited_id} of tenant acme requests per minute"
    assert record["outcome"]["code"] == "RESOURCE_EXHAUSTED"  # type: ignore[index]
    assert "limit" not in _record(node, "cid-limited-first")


async def test_a_tenant_over_budget_is_refused_on_every_node_within_one_lease_period(fleet: Fleet) -> None:
    # 400 characters are about 100 input tokens: about 100,000 nano-USD a request, reserved
    # before dispatch and settled to what the simulator counts; $0.001 a day is ~10 requests.
    budget = 1_000_000
    await _set(fleet, tenant=TENANT, budget_day_nanos=budget)
    key_id, secret = await _key(fleet, "spender")
    served = 0
    async with AsyncExitStack() as stack:
        stubs = [
            infer_pb2_grpc.InferServiceStub(
                await stack.enter_async_context(grpc.aio.insecure_channel(node.address))
            )
            for node in fleet.nodes
        ]
        # Every node serves the tenant while there is budget.
        for i, stub in enumerate(stubs):
            assert (await _call(stub, secret, i, text=PROMPT)).code == grpc.StatusCode.OK
            served += 1
        spent = None
        for _ in range(20):
            result = await _call(stubs[0], secret, 0, text=PROMPT)
            if result.code != grpc.StatusCode.OK:
                spent = result
                break
            served += 1
        assert spent is not None, "the budget never ran out"
        exhausted_at = time.monotonic()
        assert spent.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert spent.details.startswith("tenant acme budget per day exceeded"), spent.details
        assert spent.retry_after is not None
        assert int(spent.retry_after) >= 1

        async def refused(i: int) -> float:
            nonlocal served
            result = await _call(stubs[i], secret, i, text=PROMPT)
            if result.code == grpc.StatusCode.OK:
                served += 1
            assert result.code == grpc.StatusCode.RESOURCE_EXHAUSTED, result
            assert result.details.startswith("tenant acme budget per day exceeded"), result.details
            return time.monotonic() - exhausted_at

        delays = [await eventually(lambda i=i: refused(i), timeout=10, interval=0.05) for i in (1, 2)]
    print(f"over budget: refused on the other nodes after {', '.join(f'{d:.3f} s' for d in delays)}")
    # One lease period, plus the time a loaded machine takes to run one round and a request.
    assert max(delays) <= LEASE + 1.0, f"refused after {delays} s (lease period {LEASE} s)"

    # Never more than the budget (what the nodes' evidence says was spent), and the control
    # plane counts at least that (what nodes still hold is counted until handed back).
    def costs() -> list[int]:
        found = [
            r["cost"]["total_nanos"]  # type: ignore[index]
            for node in fleet.nodes
            for r in read_records(log_path(node.settings.data_dir, node.settings.node_id))
            if r.get("api_key_id") == key_id and r["outcome"]["code"] == "OK"  # type: ignore[index]
        ]
        assert len(found) == served
        return found

    spent_by_evidence = sum(await eventually(costs, message="the served requests' records"))
    assert served >= 3
    assert spent_by_evidence <= budget, (served, spent_by_evidence)

    async def counted() -> int:
        info = await fleet.admin.GetLimits(admin_pb2.GetLimitsRequest(tenant=TENANT))
        assert spent_by_evidence <= info.spent_day_nanos <= budget, (spent_by_evidence, info.spent_day_nanos)
        return int(info.spent_day_nanos)

    await eventually(counted, message="the control plane to count what was spent")


async def test_control_plane_unreachable_fail_open_serves_at_the_last_lease_fail_closed_refuses(
    fleet: Fleet,
) -> None:
    await fleet.admin.CreateTenant(admin_pb2.CreateTenantRequest(name="strict"))
    await fleet.admin.ApplyPolicy(
        admin_pb2.ApplyPolicyRequest(tenant="strict", document="default_model: small")
    )
    _, open_secret = await _key(fleet, "open")
    _, closed_secret = await _key(fleet, "closed", tenant="strict")
    await _set(fleet, tenant=TENANT, requests_per_minute=600)
    await _set(
        fleet,
        tenant="strict",
        requests_per_minute=600,
        on_unreachable=snapshot_pb2.ON_UNREACHABLE_FAIL_CLOSED,
    )
    node = fleet.nodes[0]
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        # Both tenants lease while the control plane is up: a steady 4/s for a few periods.
        for _ in range(12):
            assert (await _call(stub, open_secret, 0)).code == grpc.StatusCode.OK
            assert (await _call(stub, closed_secret, 0)).code == grpc.StatusCode.OK
            await asyncio.sleep(0.25)
        quotas = node.quotas
        assert quotas is not None
        assert quotas.reachable

        await fleet.running.cp.stop()
        await eventually(lambda: not quotas.reachable, timeout=10, message="the node to notice")

        closed = await _call(stub, closed_secret, 0)
        assert closed.code == grpc.StatusCode.UNAVAILABLE
        assert closed.details.startswith("tenant strict requests per minute: no quota can be leased"), closed
        assert closed.retry_after is not None
        # The HTTP door says the same, retry-after included (it once had none on a 503).
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://{node.http_address}/v1/chat/completions",
                json={"model": "small", "messages": [{"role": "user", "content": "hi"}]},
                headers={"authorization": f"Bearer {closed_secret}"},
            ) as response,
        ):
            assert response.status == 503, await response.text()
            assert "tenant strict requests per minute: no quota can be leased" in await response.text()
            assert int(response.headers["retry-after"]) >= 1

        # Fail open: still served at about the rate of the last leases (4/s here)...
        for _ in range(6):
            assert (await _call(stub, open_secret, 0)).code == grpc.StatusCode.OK
            await asyncio.sleep(0.5)
        # ...and still limited: far beyond that rate, requests are refused.
        burst = [await _call(stub, open_secret, 0) for _ in range(40)]
        assert any(r.code == grpc.StatusCode.RESOURCE_EXHAUSTED for r in burst)


async def test_a_node_leases_for_its_own_workers_only(fleet: Fleet) -> None:
    node = fleet.nodes[0]
    async with aio_channel(fleet.running.node_address, node.identity.client_tls()) as channel:
        stub = quota_pb2_grpc.QuotaServiceStub(channel)
        # Its own workers, or itself: granted (nothing asked, nothing granted).
        for holder in ("limits-1/0", "limits-1/7", "limits-1", ""):
            assert list((await stub.Lease(quota_pb2.LeaseRequest(holder=holder), timeout=10)).grants) == []
        # Another node's worker, another node, a name that only starts like its own; the
        # worker of a node whose id starts with its own and a slash ("limits-1/x" is a node
        # id as good as any); a worker that is no worker number.
        for holder in ("limits-2/0", "limits-2", "limits-1x/0", "/limits-1/0", "limits-1/x/0", "limits-1/x"):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Lease(quota_pb2.LeaseRequest(holder=holder), timeout=10)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, holder
            assert "a node leases for its own workers only ('limits-1/<worker>')" in (
                refused.value.details() or ""
            )
        # At most MAX_WORKERS workers, each with one name: every holder counts on its own in a
        # tenant's fair share, so a node naming more would shrink the other nodes' shares.
        last = f"limits-1/{MAX_WORKERS - 1}"
        assert list((await stub.Lease(quota_pb2.LeaseRequest(holder=last), timeout=10)).grants) == []
        for holder in (f"limits-1/{MAX_WORKERS}", "limits-1/9999999999999999", "limits-1/07", "limits-1/00"):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Lease(quota_pb2.LeaseRequest(holder=holder), timeout=10)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, holder
            worker = holder.removeprefix("limits-1/")
            assert refused.value.details() == (
                f"holder: worker '{worker}' is not one of the {MAX_WORKERS} a node may run "
                f"('limits-1/0' .. 'limits-1/{MAX_WORKERS - 1}', no leading zeros)"
            )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Lease(quota_pb2.LeaseRequest(holder="limits-1/" + "9" * 300), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (refused.value.details() or "").startswith("holder: at most")


async def test_a_node_with_two_workers_holds_a_tenants_limit_within_10_percent(
    fleet: Fleet, private_tmp: Path
) -> None:
    limit = 600  # per minute: 10 per second for the node's two workers together
    await _set(fleet, tenant=TENANT, requests_per_minute=limit)
    _, secret = await _key(fleet, "workers")
    data_dir = Path(tempfile.mkdtemp(prefix="lw-", dir=private_tmp))
    http_port = free_port()
    running = fleet.running
    args = [
        "dataplane", "serve", "--workers", "2", "--node-id", "limits-w",
        "--listen", f"127.0.0.1:{free_port()}", "--http-listen", f"127.0.0.1:{http_port}",
        "--control-plane", running.node_address, "--enroll-address", running.address,
        "--trust-key", str(running.trust_key_path), "--data-dir", str(data_dir),
        "--quota-lease-ms", str(int(LEASE * 1000)),
    ]  # fmt: skip
    env = {**os.environ, "SIGNALBOX_ENROLL_TOKEN": await running.enroll_token()}
    async with workers_up(args, 2, env) as process:
        await eventually(
            lambda: _http_ok(http_port, secret), timeout=60, message="the node serves the tenant"
        )
        # Offered: twice the limit, a new connection per request (the kernel spreads them
        # over the two workers, unevenly).
        warmup, window, offered = 4.0, 16.0, 20.0
        started = time.monotonic()
        sent: list[tuple[float, int]] = []
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:

            async def one() -> None:
                at = time.monotonic()
                sent.append((at, await _http_status(session, http_port, secret)))

            tasks = []
            n = 0
            while (due := started + n / offered) < started + warmup + window:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                tasks.append(asyncio.create_task(one()))
                n += 1
            await asyncio.gather(*tasks)
        begin, end = started + warmup, started + warmup + window
        served = sum(1 for at, status in sent if begin <= at < end and status == 200)
        rate, expected = served / window, limit / 60
        print(f"two workers: {rate:.2f}/s of {expected:.2f}/s")
        assert abs(rate - expected) <= 0.1 * expected, f"served {rate:.2f}/s, limit {expected:.2f}/s"
        # Worker 1 may answer 503 for a moment at the start, until it has the snapshot.
        assert {status for at, status in sent if begin <= at < end} == {200, 429}
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 60) == 0


async def _http_status(session: aiohttp.ClientSession, port: int, secret: str) -> int:
    async with session.post(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16},
        headers={"authorization": f"Bearer {secret}"},
    ) as response:
        await response.read()
        return response.status


async def _http_ok(port: int, secret: str) -> bool:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        return await _http_status(session, port, secret) == 200
