"""A connected node's graceful stop: what its drain spent reaches the control plane's lease count.

The stop cancelled the node's leaser before the drain, so what the drained requests spent past
what the node held (a mirrored shadow call's charge: a debt) never reached the ledger's lease
count; only shipped evidence (``controlplane.evidence.spend``) made up for it, which a budget
with other nodes still holding quota does not see past (the ledger counts the larger of the
two, not their sum). Once drained, the node's last lease reports the debt and hands back what
it holds unused: the lease count is what the node's evidence says was spent."""

from __future__ import annotations

from pathlib import Path

import grpc
import sqlalchemy as sa

from controlplane.evidence.spend import scope_of
from dataplane.evidence.log import log_path
from dataplane.evidence.records import read_records
from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from signalbox.shell.simulator import Simulator
from signalbox.shell.simulator.behaviour import Behaviour
from tests.controlplane.conftest import Admin
from tests.e2e.conftest import loopback_node
from tests.fixtures.postgres import RunningControlPlane
from tests.helpers import eventually

POLICY = """
default_model: cheap
allowed_models: [cheap, dear]
rules:
  - name: mirror
    models: [cheap]
    shadow: {model: dear, share: 1}
"""
"""Every request served by cheap, mirrored to dear (20 times its price)."""


async def _seed(admin: Admin, simulator: Simulator) -> str:
    tenant = await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="acme"))
    await admin.CreateProvider(
        admin_pb2.CreateProviderRequest(
            provider=admin_pb2.Provider(
                name="sim", type="simulated", base_url=f"{simulator.base_url}/v1", timeout_ms=10_000
            )
        )
    )
    for alias, upstream, price in (("cheap", "sim-fast", 100_000_000), ("dear", "sim-smart", 2_000_000_000)):
        await admin.CreateModel(
            admin_pb2.CreateModelRequest(
                model=admin_pb2.Model(
                    alias=alias,
                    capabilities=[1],
                    input_price_nanos_per_mtok=price,
                    output_price_nanos_per_mtok=price,
                    deployments=[admin_pb2.Deployment(provider="sim", upstream_model=upstream)],
                )
            )
        )
    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant="acme", document=POLICY))
    await admin.SetLimits(admin_pb2.SetLimitsRequest(tenant="acme", budget_day_nanos=10_000_000))
    return str(tenant.id)


async def test_a_connected_nodes_drain_spend_reaches_the_lease_count(
    admin: Admin, control_plane: RunningControlPlane, simulator: Simulator, private_tmp: Path
) -> None:
    tenant_id = await _seed(admin, simulator)
    created = await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant="acme", name="drain"))
    # The evidence ships at the stop (its evidence drain), after the last lease: the ledger's
    # lease count is the leases' alone.
    node = await loopback_node(
        control_plane, "drain-1", private_tmp, quota_lease_interval=0.1, evidence_ship_interval=60.0
    )
    await node.start()
    try:
        await node.wait_for_version(await admin.latest_version(), timeout=20)
        simulator.set_behaviour("sim-fast", Behaviour(latency_ms=500))
        simulator.set_behaviour("sim-smart", Behaviour(latency_ms=1_000))
        request = infer_pb2.InferRequest(
            params=infer_pb2.GenerationParams(max_output_tokens=8), correlation_id="drained"
        )
        request.messages.add(role=infer_pb2.ROLE_USER).content.add(text="x" * 400)
        async with grpc.aio.insecure_channel(node.address) as channel:
            stub = infer_pb2_grpc.InferServiceStub(channel)
            call = stub.Infer(request, metadata=(("authorization", f"Bearer {created.secret}"),), timeout=30)
            await eventually(lambda: simulator.stats("sim-fast").chat == 1, message="the upstream has it")
            await node.stop(10.0)
            assert (await call).correlation_id == "drained"
    finally:
        await node.stop()
    records = list(read_records(log_path(node.settings.data_dir, "drain-1")))
    assert sorted(r["kind"] for r in records) == ["infer", "shadow"]
    recorded = sum(r["cost"]["total_nanos"] for r in records)
    assert recorded > 200_000  # the mirror's share (dear) included

    assert control_plane.cp.quota is not None
    async with control_plane.cp.quota._sessions() as session:
        leased = (
            await session.execute(
                sa.text('SELECT "window", used FROM quota_state WHERE scope = :scope'),
                {"scope": scope_of(tenant_id, "", "day")},
            )
        ).all()
    # Leased, less what was handed back, plus what was overspent: what was spent.
    assert [used for _, used in leased] == [recorded], (leased, recorded)
    # What the operator reads: the larger of the lease count and shipped evidence.
    info = await admin.GetLimits(admin_pb2.GetLimitsRequest(tenant="acme"))
    assert info.spent_day_nanos == recorded
