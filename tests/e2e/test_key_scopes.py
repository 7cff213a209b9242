"""Key scopes end to end: created through the Admin API, shipped in a signed snapshot and
enforced by a connected node; a key whose stored scopes the node does not understand (one
written before scopes were validated) is refused alone, and the snapshot is still applied."""

from __future__ import annotations

import grpc
import pytest
import sqlalchemy as sa

from dataplane.app import DataPlaneNode
from dataplane.evidence.log import log_path
from dataplane.evidence.records import read_records
from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.common.v1 import common_pb2
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from signalbox.shell.simulator import Simulator
from tests.controlplane.conftest import Admin
from tests.e2e.conftest import NodeFactory
from tests.fixtures.postgres import RunningControlPlane
from tests.helpers import eventually

TENANT = "acme"
POLICY = """
default_model: beta
allowed_models: [beta, alpha]
rules:
  - name: beta-first
    models: [beta, alpha]
"""


async def _seed(admin: Admin, simulator: Simulator) -> None:
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name=TENANT))
    await admin.CreateProvider(
        admin_pb2.CreateProviderRequest(
            provider=admin_pb2.Provider(
                name="sim", type="simulated", base_url=f"{simulator.base_url}/v1", timeout_ms=10_000
            )
        )
    )
    for alias in ("alpha", "beta"):
        await admin.CreateModel(
            admin_pb2.CreateModelRequest(
                model=admin_pb2.Model(
                    alias=alias,
                    capabilities=[common_pb2.CAPABILITY_CHAT, common_pb2.CAPABILITY_STREAMING],
                    deployments=[admin_pb2.Deployment(provider="sim", upstream_model=f"{alias}-upstream")],
                )
            )
        )
    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant=TENANT, document=POLICY))


async def _key(admin: Admin, name: str, *scopes: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    created = await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant=TENANT, name=name, scopes=scopes))
    return str(created.key.id), (("authorization", f"Bearer {created.secret}"),)


async def _converged(admin: Admin, node: DataPlaneNode) -> None:
    await node.store.wait_for_version(await admin.latest_version(), timeout=15)


def _chat(**fields: object) -> infer_pb2.InferRequest:
    request = infer_pb2.InferRequest(**fields)  # type: ignore[arg-type]
    request.messages.add(role=infer_pb2.ROLE_USER).content.add(text="hi")
    return request


async def _denied(call: object) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, info.value.details()
    return info.value.details() or ""


async def test_scopes_set_through_the_admin_api_are_enforced_by_a_connected_node(
    admin: Admin, simulator: Simulator, connected_node: NodeFactory, control_plane: RunningControlPlane
) -> None:
    await _seed(admin, simulator)
    scoped_id, scoped = await _key(admin, "scoped", "op:chat", "model:alpha", "model:not-registered-yet")
    legacy_id, legacy = await _key(admin, "legacy", "op:chat")
    # As if stored before scopes were validated: a scope no node understands.
    engine = sa.create_engine(control_plane.database_url, poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE api_keys SET scopes = '[\"infer\"]' WHERE id = :id"), {"id": legacy_id}
            )
    finally:
        engine.dispose()
    _, unscoped = await _key(admin, "unscoped")  # also publishes a snapshot with the legacy row
    node = await connected_node("edge-scopes")
    await _converged(admin, node)

    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        served = await stub.Infer(_chat(), metadata=scoped, timeout=10)
        assert served.model == "alpha"
        assert [(d.model, d.reason) for d in served.routing.dropped] == [
            ("beta", "outside the key's scope (model:alpha, model:not-registered-yet)")
        ]
        assert "model 'beta'" in await _denied(stub.Infer(_chat(model="beta"), metadata=scoped, timeout=10))
        assert "operation 'stream'" in await _denied(
            stub.InferStream(_chat(correlation_id="cid-scoped-stream"), metadata=scoped, timeout=10).read()
        )
        assert "'infer' is not understood" in await _denied(
            stub.Infer(_chat(correlation_id="cid-legacy"), metadata=legacy, timeout=10)
        )
        assert (await stub.Infer(_chat(), metadata=unscoped, timeout=10)).model == "beta"

    assert simulator.stats("beta-upstream").chat == 1
    path = log_path(node.settings.data_dir, node.settings.node_id)

    def refusals() -> dict[str, tuple[str, str]]:
        found = {
            r["correlation_id"]: (r["api_key_id"], r["outcome"]["code"])
            for r in read_records(path)
            if r["correlation_id"] in ("cid-scoped-stream", "cid-legacy")
        }
        assert len(found) == 2
        return found

    assert await eventually(refusals, message="the refusals' evidence") == {
        "cid-scoped-stream": (scoped_id, "PERMISSION_DENIED"),
        "cid-legacy": (legacy_id, "PERMISSION_DENIED"),
    }
