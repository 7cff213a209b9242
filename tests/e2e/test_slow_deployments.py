"""Slow and hostile deployments through a real control plane and a real node:

- a deployment slower than the callers' deadlines is routed around after a short warm-up;
- a policy's hedge races a second model beside a silent one: the answer comes from the
  second, the first's upstream sees the disconnect, and the response and the evidence list
  both attempts;
- a bad hedge block is refused at ApplyPolicy naming its path;
- a 429 saying Retry-After: one year keeps a deployment out for only the node's cap;
- ``--max-retry-after`` reaches the node, and a nonsensical value is refused.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from dataplane.app import DataPlaneNode
from dataplane.evidence.log import log_path
from dataplane.evidence.records import read_records
from dataplane.node_settings import NodeSettings
from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.common.v1 import common_pb2
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from signalbox.shell.cli import main
from signalbox.shell.simulator import Behaviour, Simulator
from tests.controlplane.conftest import Admin
from tests.dataplane.providers.fakes import HANG, FakeUpstream, Reply
from tests.e2e.conftest import NodeFactory
from tests.fixtures.postgres import RunningControlPlane
from tests.helpers import eventually

TENANT = "acme"
A_YEAR = 31_536_000

HEDGED_POLICY = """
allowed_models: [silent, quick]
retry: {max_attempts: 2, hedge: {after_ms: 150, max_extra: 1}}
rules:
  - name: hedged
    models: [silent, quick]
"""


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as upstream:
        yield upstream


async def _seed(admin: Admin, models: dict[str, str], policy: str) -> str:
    """Tenant, one provider per base URL, a chat model (alias -> base URL) on each, the
    policy; returns an API key."""
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name=TENANT, tier="gold"))
    providers: dict[str, str] = {}
    for alias, base_url in models.items():
        if base_url not in providers:
            name = providers[base_url] = f"up{len(providers)}"
            await admin.CreateProvider(
                admin_pb2.CreateProviderRequest(
                    provider=admin_pb2.Provider(
                        name=name, type="simulated", base_url=base_url, timeout_ms=10_000
                    )
                )
            )
        await admin.CreateModel(
            admin_pb2.CreateModelRequest(
                model=admin_pb2.Model(
                    alias=alias,
                    capabilities=[common_pb2.CAPABILITY_CHAT],
                    deployments=[admin_pb2.Deployment(provider=providers[base_url], upstream_model=alias)],
                )
            )
        )
    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant=TENANT, document=policy))
    key = await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant=TENANT, name="e2e"))
    return str(key.secret)


def _hello(correlation_id: str) -> infer_pb2.InferRequest:
    return infer_pb2.InferRequest(
        correlation_id=correlation_id,
        messages=[infer_pb2.Message(role=infer_pb2.ROLE_USER, content=[infer_pb2.ContentPart(text="hi")])],
    )


async def _record(node: DataPlaneNode, evidence_id: str) -> dict[str, Any]:
    path = log_path(node.settings.data_dir, node.settings.node_id)

    def found() -> dict[str, Any]:
        records = [r for r in read_records(path) if r["record_id"] == evidence_id]
        assert records, "evidence record not yet on disk"
        return records[0]

    return await eventually(found, message="the evidence record of the request")


async def test_a_hedged_request_is_served_by_the_second_model_and_both_attempts_are_evidence(
    admin: Admin, simulator: Simulator, fake: FakeUpstream, connected_node: NodeFactory
) -> None:
    api_key = await _seed(
        admin, {"silent": f"{fake.base_url}/v1", "quick": f"{simulator.base_url}/v1"}, HEDGED_POLICY
    )
    node = await connected_node("edge-hedge")
    await node.store.wait_for_version(await admin.latest_version(), timeout=15)
    fake.enqueue(Reply(body=(b" ", HANG)))  # headers, then nothing: it never answers

    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        started = time.monotonic()
        response = await stub.Infer(
            _hello("cid-hedge"), metadata=(("authorization", f"Bearer {api_key}"),), timeout=10
        )
        took = time.monotonic() - started

    assert response.model == "quick"
    assert took < 3, f"{took:.2f} s: the silent model never answers, the hedge did"
    assert [(a.model, a.outcome) for a in response.routing.attempts] == [
        ("silent", "hedged"),
        ("quick", "ok"),
    ]
    await eventually(lambda: fake.disconnects == 1, message="the silent upstream saw the disconnect")
    assert simulator.stats("quick").chat == 1
    record = await _record(node, response.evidence_id)
    assert record["correlation_id"] == "cid-hedge"
    attempts = record["routing"]["attempts"]
    assert [(a["model"], a["outcome"]) for a in attempts] == [("silent", "hedged"), ("quick", "ok")]
    assert attempts[0]["error"] == "cancelled: quick@up1 answered first"


async def test_a_deployment_slower_than_the_callers_deadline_is_routed_around(
    admin: Admin, simulator: Simulator, connected_node: NodeFactory
) -> None:
    """One model, two deployments (two providers on the simulator, one upstream model each):
    one answers in 3 s, the callers allow 0.3 s. It used to fail half the requests forever."""
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name=TENANT, tier="gold"))
    for name in ("east", "west"):
        await admin.CreateProvider(
            admin_pb2.CreateProviderRequest(
                provider=admin_pb2.Provider(
                    name=name, type="simulated", base_url=f"{simulator.base_url}/v1", timeout_ms=10_000
                )
            )
        )
    await admin.CreateModel(
        admin_pb2.CreateModelRequest(
            model=admin_pb2.Model(
                alias="shared",
                capabilities=[common_pb2.CAPABILITY_CHAT],
                deployments=[
                    admin_pb2.Deployment(provider="east", upstream_model="shared-slow"),
                    admin_pb2.Deployment(provider="west", upstream_model="shared-ok"),
                ],
            )
        )
    )
    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant=TENANT, document="default_model: shared"))
    api_key = str((await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant=TENANT, name="e2e"))).secret)
    simulator.set_behaviour("shared-slow", Behaviour(latency_ms=3000))
    node = await connected_node("edge-slow")
    await node.store.wait_for_version(await admin.latest_version(), timeout=15)

    codes: list[grpc.StatusCode] = []
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        for i in range(200):
            try:
                await stub.Infer(
                    _hello(f"cid-{i}"), metadata=(("authorization", f"Bearer {api_key}"),), timeout=0.3
                )
            except grpc.aio.AioRpcError as exc:
                codes.append(exc.code())
            else:
                codes.append(grpc.StatusCode.OK)
    assert codes.count(grpc.StatusCode.OK) >= 190, codes
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED}
    # The slow deployment saw only the warm-up (its breaker opens at 5 failures).
    assert simulator.stats("shared-slow").chat <= 5
    # Every answer came from shared-ok; a request can also reach it and still miss the
    # caller's 0.3 s on a loaded machine (then the caller saw DEADLINE_EXCEEDED).
    ok = codes.count(grpc.StatusCode.OK)
    assert ok <= simulator.stats("shared-ok").chat <= ok + codes.count(grpc.StatusCode.DEADLINE_EXCEEDED)


@pytest.mark.parametrize(
    ("document", "field", "problem"),
    [
        ("retry: {hedge: {after_ms: 0}}", "document.retry.hedge.after_ms", ""),
        ("retry: {hedge: {max_extra: 1}}", "document.retry.hedge.after_ms", "required"),
        (
            "rules: [{models: [small], retry: {hedge: {after_ms: 100, max_extra: 7}}}]",
            "document.rules[0].retry.hedge.max_extra",
            "",
        ),
        ("retry: {hedge: {after_ms: 100, jitter: true}}", "document.retry.hedge.jitter", "unknown field"),
        (
            "{default_model: small, retry: {max_attempts: 1, hedge: {after_ms: 100}}}",
            "document.retry.hedge",
            "max_attempts of at least 2",
        ),
    ],
)
async def test_a_bad_hedge_block_is_refused_at_apply_with_its_path(
    admin: Admin, document: str, field: str, problem: str
) -> None:
    await admin.seed()
    before = await admin.latest_version()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant=TENANT, document=document))
    message = caught.value.details() or ""
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, message
    assert message.split(": ")[0] == field, message
    assert problem in message
    assert await admin.latest_version() == before


async def test_a_year_long_retry_after_keeps_a_deployment_out_only_for_the_nodes_cap(
    admin: Admin, simulator: Simulator, control_plane: RunningControlPlane, private_tmp: Path
) -> None:
    base = f"{simulator.base_url}/v1"
    policy = "allowed_models: [limited, spare]\nrules:\n  - name: r\n    models: [limited, spare]\n"
    api_key = await _seed(admin, {"limited": base, "spare": base}, policy)
    simulator.set_behaviour("limited", Behaviour(fail_status=429, retry_after=A_YEAR))
    settings = NodeSettings(
        listen="127.0.0.1:0",
        **(await control_plane.node_link()),
        trust_keys=(control_plane.trust_key_path,),
        node_id="edge-capped",
        data_dir=Path(tempfile.mkdtemp(prefix="edge-capped-", dir=private_tmp)),
        drain_seconds=2.0,
        max_retry_after=2.0,
    )
    async with DataPlaneNode(settings) as node, grpc.aio.insecure_channel(node.address) as channel:
        await node.store.wait_for_version(await admin.latest_version(), timeout=15)
        stub = infer_pb2_grpc.InferServiceStub(channel)
        auth = (("authorization", f"Bearer {api_key}"),)
        first = await stub.Infer(_hello("cid-429"), metadata=auth, timeout=10)
        assert [(a.model, a.outcome) for a in first.routing.attempts] == [
            ("limited", "rate_limited"),
            ("spare", "ok"),
        ]
        # Deferred for now: the next request does not even try it ...
        second = await stub.Infer(_hello("cid-deferred"), metadata=auth, timeout=10)
        assert [(a.model, a.outcome) for a in second.routing.attempts] == [("spare", "ok")]
        assert simulator.stats("limited").chat == 1
        simulator.set_behaviour("limited", Behaviour())

        # ... but after the cap (2 s), not a year, it serves again.
        async def served_by_limited() -> bool:
            answer = await stub.Infer(_hello("cid-again"), metadata=auth, timeout=10)
            return answer.model == "limited"

        await eventually(served_by_limited, timeout=8, interval=0.2, message="limited served again")


def test_the_max_retry_after_flag_reaches_the_node(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataplane.app

    seen: list[NodeSettings] = []

    class Recording(DataPlaneNode):
        def __init__(self, settings: NodeSettings) -> None:
            seen.append(settings)
            raise OSError("recorded; not starting")

    monkeypatch.setattr(dataplane.app, "DataPlaneNode", Recording)
    assert main(["dataplane", "serve", "--listen", "127.0.0.1:0", "--max-retry-after", "2.5"]) == 1
    assert [s.max_retry_after for s in seen] == [2.5]
    assert NodeSettings().max_retry_after == 300.0


@pytest.mark.parametrize("value", ["0", "-3", "nan", "inf"])
def test_a_nonsensical_max_retry_after_is_refused(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dataplane", "serve", "--listen", "127.0.0.1:0", "--max-retry-after", value]) == 2
    assert "--max-retry-after" in capsys.readouterr().err
