"""Admin change -> signed snapshot -> node applies it -> the next Infer request routes by it.

And the other way round: envelopes a node must refuse are NACKed with a reason the
control plane shows, while the node keeps serving its last-known-good.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from pathlib import Path

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.app import DataPlaneNode
from dataplane.config.model import Scope
from dataplane.node_settings import NodeSettings
from dataplane.snapshot.envelope import SNAPSHOT_PAYLOAD_TYPE, key_id_for, pae
from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from signalbox.shell.simulator import Simulator
from tests.controlplane.conftest import Admin
from tests.e2e.conftest import NodeFactory
from tests.fixtures.postgres import RunningControlPlane, cp_settings, running_control_plane
from tests.helpers import eventually

TENANT = "acme"


async def _seed(admin: Admin, simulator: Simulator) -> str:
    """Tenant, provider on the simulator, two models, a policy; returns an API key."""
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name=TENANT))
    await admin.CreateProvider(
        admin_pb2.CreateProviderRequest(
            provider=admin_pb2.Provider(
                name="sim", type="simulated", base_url=f"{simulator.base_url}/v1", timeout_ms=10_000
            )
        )
    )
    for alias in ("small", "large"):
        await admin.CreateModel(
            admin_pb2.CreateModelRequest(
                model=admin_pb2.Model(
                    alias=alias,
                    capabilities=[1],
                    deployments=[admin_pb2.Deployment(provider="sim", upstream_model=f"{alias}-upstream")],
                )
            )
        )
    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant=TENANT, document="default_model: small"))
    key = await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant=TENANT, name="e2e"))
    return str(key.secret)


async def _converged(admin: Admin, node_id: str) -> int:
    """Wait until the node has ACKed the newest snapshot (convergence is the ACK, not the send)."""
    latest = await admin.latest_version()

    async def acked() -> bool:
        nodes = (await admin.ListNodes(admin_pb2.ListNodesRequest())).nodes
        return any(n.node_id == node_id and n.applied_version >= latest for n in nodes)

    await eventually(acked, timeout=15, message=f"{node_id} to apply v{latest}")
    return latest


async def _infer(node: DataPlaneNode, api_key: str) -> infer_pb2.InferResponse:
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        request = infer_pb2.InferRequest(
            messages=[infer_pb2.Message(role=infer_pb2.ROLE_USER, content=[infer_pb2.ContentPart(text="hi")])]
        )
        response: infer_pb2.InferResponse = await stub.Infer(
            request, metadata=(("authorization", f"Bearer {api_key}"),), timeout=10
        )
        return response


async def test_policy_change_reaches_the_node_and_reroutes_the_next_request(
    admin: Admin, simulator: Simulator, connected_node: NodeFactory
) -> None:
    api_key = await _seed(admin, simulator)
    node = await connected_node("edge-1")
    first_version = await _converged(admin, "edge-1")
    before = await _infer(node, api_key)
    assert before.model == "small"
    assert before.snapshot_version == first_version

    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant=TENANT, document="default_model: large"))
    version = await _converged(admin, "edge-1")
    after = await _infer(node, api_key)
    assert after.model == "large"
    assert after.snapshot_version == version > first_version
    assert simulator.stats("large-upstream").chat == 1


def _resign(payload: bytes, key: Ed25519PrivateKey) -> snapshot_pb2.SignedEnvelope:
    envelope = snapshot_pb2.SignedEnvelope(payload_type=SNAPSHOT_PAYLOAD_TYPE, payload=payload)
    envelope.signatures.add(
        key_id=key_id_for(key.public_key()), sig=key.sign(pae(SNAPSHOT_PAYLOAD_TYPE, payload))
    )
    return envelope


def _with_version(payload: bytes, version: int) -> bytes:
    snapshot = snapshot_pb2.Snapshot.FromString(payload)
    snapshot.version = version
    return snapshot.SerializeToString(deterministic=True)


async def test_bad_envelopes_are_nacked_and_the_node_keeps_its_last_known_good(
    admin: Admin, control_plane: RunningControlPlane, simulator: Simulator, connected_node: NodeFactory
) -> None:
    api_key = await _seed(admin, simulator)
    node = await connected_node("edge-2")
    good = await _converged(admin, "edge-2")
    current = await admin.ExportSnapshot(admin_pb2.ExportSnapshotRequest())
    assert control_plane.cp.signer is not None
    assert control_plane.cp.sync is not None
    signer = control_plane.cp.signer.private_key

    tampered = _resign(_with_version(current.payload, good + 10), signer)
    tampered.signatures[0].sig = bytes([tampered.signatures[0].sig[0] ^ 1]) + tampered.signatures[0].sig[1:]
    older = _resign(_with_version(current.payload, good - 1), signer)
    foreign = _resign(_with_version(current.payload, good + 20), Ed25519PrivateKey.generate())

    cases: list[tuple[str, snapshot_pb2.SignedEnvelope, int, Callable[[str], bool]]] = [
        ("tampered signature", tampered, good + 10, lambda r: "signature" in r),
        ("lower version", older, good - 1, lambda r: "rollback" in r or "version" in r),
        ("unknown signing key", foreign, good + 20, lambda r: "trusted key" in r),
    ]
    for name, envelope, version, reason_ok in cases:
        assert control_plane.cp.sync.inject(envelope, "edge-2") == 1, name

        async def nacked(version: int = version) -> admin_pb2.Node:
            nodes = (await admin.ListNodes(admin_pb2.ListNodesRequest())).nodes
            (n,) = [n for n in nodes if n.node_id == "edge-2"]
            assert n.last_nack_version == version
            return n

        status = await eventually(nacked, message=f"NACK of the {name} envelope")
        assert reason_ok(status.last_nack_reason), f"{name}: {status.last_nack_reason}"
        assert status.applied_version == good
        assert node.store.version == good
        assert node.store.payload_sha256 == hashlib.sha256(current.payload).digest()
        assert (await _infer(node, api_key)).snapshot_version == good, name

    # A real change afterwards still arrives and applies.
    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant=TENANT, document="default_model: large"))
    assert (await _converged(admin, "edge-2")) == good + 1
    assert (await _infer(node, api_key)).model == "large"


async def test_node_rides_out_a_control_plane_restart(
    database_url: str, private_tmp: Path, simulator: Simulator
) -> None:
    """Control plane down: the node keeps serving its last-known-good; once a control
    plane is back on the same address the node reconnects and takes the next change."""
    settings = cp_settings(database_url, private_tmp)
    async with AsyncExitStack() as stack:
        async with running_control_plane(settings) as first, _admin(first) as admin:
            api_key = await _seed(admin, simulator)
            token, address, node_address = first.token, first.address, first.node_address
            node = DataPlaneNode(
                NodeSettings(
                    listen="127.0.0.1:0",
                    **(await first.node_link()),
                    trust_keys=(first.trust_key_path,),
                    node_id="edge-3",
                    data_dir=Path(tempfile.mkdtemp(prefix="edge-3-", dir=private_tmp)),
                    drain_seconds=2.0,
                    sync_backoff_base=0.05,
                    sync_backoff_cap=0.3,
                )
            )
            await node.start()
            stack.push_async_callback(node.stop)
            good = await _converged(admin, "edge-3")

        # Nobody is listening on the control plane's address now.
        assert node.store.version == good
        assert (await _infer(node, api_key)).snapshot_version == good

        again = replace(settings, listen=address, node_listen=node_address)
        async with running_control_plane(again) as second, _admin(second, token) as admin:
            await admin.ApplyPolicy(
                admin_pb2.ApplyPolicyRequest(tenant=TENANT, document="default_model: large")
            )
            version = await _converged(admin, "edge-3")
            assert version > good
            assert (await _infer(node, api_key)).model == "large"


@asynccontextmanager
async def _admin(running: RunningControlPlane, token: str | None = None) -> AsyncIterator[Admin]:
    metadata = (("authorization", f"Bearer {token or running.token}"),)
    async with grpc.aio.insecure_channel(running.address) as channel:
        yield Admin(admin_pb2_grpc.AdminServiceStub(channel), metadata)


async def test_snapshots_carry_the_control_planes_scope(database_url: str, private_tmp: Path) -> None:
    """A node of another deployment refuses the snapshot (reason shown); a node of this one applies it."""
    settings = cp_settings(database_url, private_tmp, scope=snapshot_pb2.Scope(deployment="eu"))
    async with AsyncExitStack() as stack:
        running = await stack.enter_async_context(running_control_plane(settings))
        admin = await stack.enter_async_context(_admin(running))
        for node_id, deployment in (("eu-1", "eu"), ("us-1", "us")):
            node = DataPlaneNode(
                NodeSettings(
                    listen="127.0.0.1:0",
                    **(await running.node_link()),
                    trust_keys=(running.trust_key_path,),
                    node_id=node_id,
                    data_dir=Path(tempfile.mkdtemp(prefix=f"{node_id}-", dir=private_tmp)),
                    scope=Scope(deployment=deployment),
                    drain_seconds=2.0,
                )
            )
            await node.start()
            stack.push_async_callback(node.stop)

        version = await _converged(admin, "eu-1")

        async def refused() -> admin_pb2.Node:
            nodes = {n.node_id: n for n in (await admin.ListNodes(admin_pb2.ListNodesRequest())).nodes}
            assert nodes["us-1"].last_nack_version == version
            return nodes["us-1"]

        us = await eventually(refused, message="the us node to refuse an eu snapshot")
        assert "scope" in us.last_nack_reason
        assert us.applied_version == 0
