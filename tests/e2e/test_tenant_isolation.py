"""Tenant isolation on the Infer API and in the evidence a node ships, end to end.

Two tenants share one node and one provider; each one's policy names its own model. Tenant
A's key cannot reach B's model (NOT_FOUND, worded exactly as for a model that does not
exist, on Infer and InferStream), and the other way round. The node ships both tenants'
evidence to the control plane; A's tenant admin then queries and exports evidence and gets
A's records only, and naming B's tenant is NOT_FOUND."""

from __future__ import annotations

import grpc
import pytest

from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.common.v1 import common_pb2
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from signalbox.shell.simulator import Simulator
from tests.controlplane.conftest import Admin
from tests.e2e.conftest import NodeFactory
from tests.e2e.test_config_push import _converged
from tests.helpers import eventually

MODELS = {"alpha": "alpha-model", "beta": "beta-model"}


async def _seed(admin: Admin, simulator: Simulator) -> dict[str, tuple[str, tuple[tuple[str, str], ...]]]:
    """Per tenant: its id and its key's metadata."""
    await admin.CreateProvider(
        admin_pb2.CreateProviderRequest(
            provider=admin_pb2.Provider(
                name="sim", type="simulated", base_url=f"{simulator.base_url}/v1", timeout_ms=10_000
            )
        )
    )
    out = {}
    for tenant, model in MODELS.items():
        row = await admin.CreateTenant(admin_pb2.CreateTenantRequest(name=tenant))
        await admin.CreateModel(
            admin_pb2.CreateModelRequest(
                model=admin_pb2.Model(
                    alias=model,
                    capabilities=[common_pb2.CAPABILITY_CHAT, common_pb2.CAPABILITY_STREAMING],
                    deployments=[admin_pb2.Deployment(provider="sim", upstream_model=f"{model}-up")],
                )
            )
        )
        await admin.ApplyPolicy(
            admin_pb2.ApplyPolicyRequest(
                tenant=tenant, document=f'{{"default_model": "{model}", "allowed_models": ["{model}"]}}'
            )
        )
        key = await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant=tenant, name=f"{tenant}-key"))
        out[tenant] = (row.id, (("authorization", f"Bearer {key.secret}"),))
    return out


def _chat(**fields: object) -> infer_pb2.InferRequest:
    request = infer_pb2.InferRequest(**fields)  # type: ignore[arg-type]
    request.messages.add(role=infer_pb2.ROLE_USER).content.add(text="hi")
    return request


async def _refusal(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value.code(), info.value.details() or ""


def _masked(message: str, model: str, correlation_id: str) -> str:
    return message.replace(model, "<model>").replace(correlation_id, "<correlation id>")


async def test_a_tenants_key_reaches_only_its_models_and_its_admin_only_its_evidence(
    admin: Admin, simulator: Simulator, connected_node: NodeFactory
) -> None:
    tenants = await _seed(admin, simulator)
    node = await connected_node("iso-1")
    await _converged(admin, "iso-1")

    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        for tenant, other in (("alpha", "beta"), ("beta", "alpha")):
            _, auth = tenants[tenant]
            served = await stub.Infer(_chat(correlation_id=f"{tenant}-own"), metadata=auth, timeout=10)
            assert served.model == MODELS[tenant]
            ghost = await _refusal(
                stub.Infer(_chat(model="ghost-model", correlation_id="ghost"), metadata=auth, timeout=10)
            )
            foreign = await _refusal(
                stub.Infer(
                    _chat(model=MODELS[other], correlation_id=f"{tenant}-foreign"), metadata=auth, timeout=10
                )
            )
            assert foreign[0] == ghost[0] == grpc.StatusCode.NOT_FOUND
            assert _masked(foreign[1], MODELS[other], f"{tenant}-foreign") == _masked(
                ghost[1], "ghost-model", "ghost"
            )
            streamed = await _refusal(
                stub.InferStream(
                    _chat(model=MODELS[other], correlation_id=f"{tenant}-stream"), metadata=auth, timeout=10
                ).read()
            )
            assert streamed[0] == grpc.StatusCode.NOT_FOUND
    assert simulator.stats("alpha-model-up").chat == simulator.stats("beta-model-up").chat == 1

    a_id, b_id = tenants["alpha"][0], tenants["beta"][0]

    async def shipped() -> bool:
        # Every record of both tenants: own, ghost, foreign, stream.
        records = (await admin.QueryEvidence(admin_pb2.QueryEvidenceRequest(limit=1000))).records
        return len(records) == 8

    await eventually(shipped, timeout=20, message="both tenants' evidence shipped")

    created = await admin.CreateAdminToken(
        admin_pb2.CreateAdminTokenRequest(name="alpha-ops", role="tenant_admin", tenant="alpha")
    )
    alpha = admin.with_token(created.token)
    records = (await alpha.QueryEvidence(admin_pb2.QueryEvidenceRequest(limit=1000))).records
    assert records
    assert {r.tenant_id for r in records} == {a_id}
    assert {r.correlation_id for r in records} == {"alpha-own", "ghost", "alpha-foreign", "alpha-stream"}
    for request in (
        admin_pb2.QueryEvidenceRequest(tenant_id=b_id),
        admin_pb2.QueryEvidenceRequest(tenant_id="beta"),
    ):
        assert (await _refusal(alpha.QueryEvidence(request)))[0] == grpc.StatusCode.NOT_FOUND

    async def exported() -> bytes:
        # A pack holds the records its chain's newest shipped checkpoint proves: wait for it.
        pack = [chunk async for chunk in alpha.ExportEvidence(admin_pb2.ExportEvidenceRequest())]
        return b"".join(chunk.data for chunk in pack) if pack[0].records == len(records) else b""

    data = await eventually(exported, timeout=20, message="A's records in A's pack")
    assert b"alpha-own" in data
    assert b_id.encode() not in data
    assert b"beta-own" not in data
