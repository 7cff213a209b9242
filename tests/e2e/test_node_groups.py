"""Node groups end to end: one control plane, a cloud node and an air-gapped node, each
served only its own group's signed snapshot; unknown groups refused before any byte."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from dataplane.app import DataPlaneNode
from dataplane.config.model import DeploymentMode, Scope
from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.api.common.v1 import common_pb2
from signalbox.api.config.v1 import snapshot_pb2, sync_pb2, sync_pb2_grpc
from signalbox.tls import ServerTls
from tests.controlplane.conftest import Admin
from tests.controlplane.identity.test_sync_refusals import attempt_sync
from tests.e2e.conftest import loopback_node
from tests.fixtures.postgres import RunningControlPlane, cp_settings, running_control_plane
from tests.helpers import eventually

SITE = snapshot_pb2.PROVIDER_LOCATION_SITE
PUBLIC = snapshot_pb2.PROVIDER_LOCATION_PUBLIC_CLOUD


def _provider_msg(name: str, location: int, site: str = "", **extra: str) -> admin_pb2.Provider:
    return admin_pb2.Provider(
        name=name,
        type="simulated",
        base_url="http://127.0.0.1:9/v1",
        credential=snapshot_pb2.SecretRef(env="SIGNALBOX_CRED_SIM"),
        location=location,  # type: ignore[arg-type]
        site=site,
        **extra,
    )


async def _provider(admin: Admin, name: str, location: int, site: str = "") -> None:
    await admin.CreateProvider(admin_pb2.CreateProviderRequest(provider=_provider_msg(name, location, site)))


async def _model(admin: Admin, alias: str, *providers: str) -> None:
    await admin.CreateModel(
        admin_pb2.CreateModelRequest(
            model=admin_pb2.Model(
                alias=alias,
                capabilities=[1],
                deployments=[
                    admin_pb2.Deployment(provider=p, upstream_model=f"{alias}-v1") for p in providers
                ],
            )
        )
    )


async def _fleet(admin: Admin) -> None:
    """A public provider, one in site-a and one in site-b; models spread over them."""
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="acme"))
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="bunker"))
    await _provider(admin, "openai", PUBLIC)
    await _provider(admin, "vllm-a", SITE, "site-a")
    await _provider(admin, "vllm-b", SITE, "site-b")
    await _model(admin, "small", "openai", "vllm-a")
    await _model(admin, "local", "vllm-a")
    await _model(admin, "far", "vllm-b")
    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant="bunker", document="default_model: local"))


async def _vault(admin: Admin) -> admin_pb2.NodeGroup:
    group: admin_pb2.NodeGroup = await admin.CreateNodeGroup(
        admin_pb2.CreateNodeGroupRequest(
            group=admin_pb2.NodeGroup(
                name="vault",
                mode=common_pb2.DEPLOYMENT_MODE_AIR_GAPPED,
                site="site-a",
                tenants=admin_pb2.Selection(names=["bunker"]),
            )
        )
    )
    return group


async def _newest(admin: Admin, group: str) -> admin_pb2.SnapshotInfo:
    info: admin_pb2.SnapshotInfo = await admin.GetSnapshot(
        admin_pb2.GetSnapshotRequest(group=group, include_content=True)
    )
    return info


@pytest.fixture
async def nodes(control_plane: RunningControlPlane, private_tmp: Path) -> AsyncIterator[list[DataPlaneNode]]:
    started: list[DataPlaneNode] = []
    yield started
    for node in reversed(started):
        await node.stop()


async def _start(nodes: list[DataPlaneNode], node: DataPlaneNode) -> DataPlaneNode:
    await node.start()
    nodes.append(node)
    return node


async def test_each_node_gets_only_its_groups_snapshot_and_changes_reach_only_that_group(
    admin: Admin, control_plane: RunningControlPlane, private_tmp: Path, nodes: list[DataPlaneNode]
) -> None:
    await _fleet(admin)
    await _vault(admin)
    cloud = await _start(nodes, await loopback_node(control_plane, "cloud-1", private_tmp))
    vault = await _start(
        nodes,
        await loopback_node(
            control_plane,
            "vault-1",
            private_tmp,
            mode=DeploymentMode.AIR_GAPPED,
            scope=Scope(node_group="vault", site="site-a"),
        ),
    )
    cloud_v = (await _newest(admin, "default")).version
    vault_info = await _newest(admin, "vault")
    await cloud.store.wait_for_version(cloud_v, timeout=15)
    await vault.store.wait_for_version(vault_info.version, timeout=15)

    # The cloud node runs the default group's snapshot: everything.
    cloud_config = cloud.store.current
    assert cloud_config is not None
    assert cloud_config.config.scope.node_group == "default"
    assert sorted(p.name for p in cloud_config.config.providers.values()) == ["openai", "vllm-a", "vllm-b"]

    # The air-gapped node runs vault's: its tenant, its site's provider, nothing else.
    vault_config = vault.store.current
    assert vault_config is not None
    config = vault_config.config
    assert (config.scope.node_group, config.scope.site) == ("vault", "site-a")
    assert config.payload_sha256 == vault_info.payload_sha256
    assert [p.name for p in config.providers.values()] == ["vllm-a"]
    assert all(p.site == "site-a" for p in config.providers.values())
    assert sorted(config.models) == ["local", "small"]
    assert [d.provider_id for d in config.models["small"].deployments] == [
        p.id for p in config.providers.values()
    ]
    assert [t.name for t in config.tenants.values()] == ["bunker"]
    # What was signed for the group says the same, as the admin reads it.
    assert [p.name for p in vault_info.content.providers] == ["vllm-a"]

    async def listed() -> dict[str, admin_pb2.Node]:
        fleet = await admin.ListNodes(admin_pb2.ListNodesRequest())
        by_id = {n.node_id: n for n in fleet.nodes}
        assert by_id["cloud-1"].applied_version == cloud_v
        assert by_id["vault-1"].applied_version == vault_info.version
        return by_id

    by_id = await eventually(listed, message="both nodes to report their group's version")
    assert (by_id["cloud-1"].node_group, by_id["vault-1"].node_group) == ("default", "vault")
    assert by_id["vault-1"].lag == 0

    # A change only vault sees the effect of: vault gets a new version, default none.
    await admin.UpdateNodeGroup(
        admin_pb2.UpdateNodeGroupRequest(name="vault", models=admin_pb2.Selection(names=["local"]))
    )
    vault_next = await _newest(admin, "vault")
    assert vault_next.version == vault_info.version + 1
    assert (await _newest(admin, "default")).version == cloud_v
    await vault.store.wait_for_version(vault_next.version, timeout=15)
    assert vault.store.version == vault_next.version
    assert sorted(vault.store.current.config.models) == ["local"]  # type: ignore[union-attr]
    assert cloud.store.version == cloud_v

    # A change in another site: default gets a new version, vault none, its node stays.
    await admin.UpdateProvider(
        admin_pb2.UpdateProviderRequest(provider=_provider_msg("vllm-b", SITE, "site-b", region="moved"))
    )
    cloud_next = (await _newest(admin, "default")).version
    assert cloud_next == cloud_v + 1
    assert (await _newest(admin, "vault")).version == vault_next.version
    await cloud.store.wait_for_version(cloud_next, timeout=15)
    listed_after = {n.node_id: n for n in (await admin.ListNodes(admin_pb2.ListNodesRequest())).nodes}
    assert listed_after["vault-1"].applied_version == vault_next.version
    assert vault.store.version == vault_next.version
    fleet = await admin.ListNodes(admin_pb2.ListNodesRequest(group="vault"))
    assert [n.node_id for n in fleet.nodes] == ["vault-1"]
    assert fleet.latest_version == vault_next.version
    assert dict(fleet.latest_versions) == {"default": cloud_next, "vault": vault_next.version}


async def test_an_air_gapped_group_never_receives_a_provider_outside_its_site(
    admin: Admin, control_plane: RunningControlPlane
) -> None:
    await _fleet(admin)
    await _vault(admin)
    # Even listed by name, a provider of another site stays out; one moved into the
    # site comes in, and leaves again when it moves away.
    await admin.UpdateNodeGroup(
        admin_pb2.UpdateNodeGroupRequest(
            name="vault", providers=admin_pb2.Selection(names=["openai", "vllm-a", "vllm-b"])
        )
    )
    await admin.UpdateProvider(
        admin_pb2.UpdateProviderRequest(provider=_provider_msg("vllm-b", SITE, "site-a"))
    )
    moved_in = await _newest(admin, "vault")
    assert sorted(p.name for p in moved_in.content.providers) == ["vllm-a", "vllm-b"]
    await admin.UpdateProvider(
        admin_pb2.UpdateProviderRequest(provider=_provider_msg("vllm-b", SITE, "site-b"))
    )
    await admin.UpdateProvider(
        admin_pb2.UpdateProviderRequest(provider=_provider_msg("openai", PUBLIC, region="x"))
    )
    assert [p.name for p in (await _newest(admin, "vault")).content.providers] == ["vllm-a"]
    history = await admin.ListSnapshots(admin_pb2.ListSnapshotsRequest(group="vault", limit=100))
    # created, listed (no change: the list names nothing new it may reach), moved in, moved out;
    # the public provider's change reached default only.
    assert [s.reason for s in history.snapshots] == [
        "update provider vllm-b",
        "update provider vllm-b",
        "create node group vault",
    ]
    for info in history.snapshots:
        stored = await admin.GetSnapshot(
            admin_pb2.GetSnapshotRequest(group="vault", version=info.version, include_content=True)
        )
        assert stored.node_group == "vault"
        assert stored.content.providers, f"vault v{info.version} lost its own site's provider"
        assert all(p.location == SITE and p.site == "site-a" for p in stored.content.providers), (
            f"vault v{info.version} carries a provider outside site-a"
        )


@pytest.mark.parametrize(
    ("group", "code", "message"),
    [
        ("nope", grpc.StatusCode.NOT_FOUND, "hello.scope.node_group: node group 'nope' not found"),
        (
            "Nope\n" + "x" * 10_000,
            grpc.StatusCode.INVALID_ARGUMENT,
            "hello.scope.node_group: must be 1..63 characters of a-z, 0-9 and '-' (got 'Nope\\\\nxxx",
        ),
    ],
)
async def test_an_unknown_group_is_refused_before_any_snapshot_byte(
    database_url: str, private_tmp: Path, group: str, code: grpc.StatusCode, message: str
) -> None:
    """Only an --insecure node port takes the group from the Hello (with certificates the
    group is the certificate's, and tokens are only made for groups that exist)."""
    settings = cp_settings(database_url, private_tmp, tls=ServerTls(insecure=True))
    async with (
        running_control_plane(settings) as insecure,
        grpc.aio.insecure_channel(insecure.address) as admin_channel,
    ):
        admin = Admin(admin_pb2_grpc.AdminServiceStub(admin_channel), insecure.metadata)
        await _fleet(admin)
        await _refused_before_any_byte(insecure.node_address, group, code, message)
        # Not recorded either: only known groups' nodes appear in the fleet.
        fleet = await admin.ListNodes(admin_pb2.ListNodesRequest())
        assert "stray-1" not in [n.node_id for n in fleet.nodes]


async def _refused_before_any_byte(address: str, group: str, code: grpc.StatusCode, message: str) -> None:
    received: list[sync_pb2.ServerMessage] = []

    async def hello() -> AsyncIterator[sync_pb2.NodeMessage]:
        yield sync_pb2.NodeMessage(
            hello=sync_pb2.Hello(
                node_id="stray-1", software_version="t", mode=1, scope=snapshot_pb2.Scope(node_group=group)
            )
        )
        await asyncio.Event().wait()  # keep our side open: the server must end the stream

    async with grpc.aio.insecure_channel(address) as channel:
        call = sync_pb2_grpc.ConfigSyncServiceStub(channel).Sync(hello())

        async def read() -> None:
            async for message in call:
                received.append(message)

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await read()
    details = info.value.details() or ""
    assert info.value.code() == code
    assert details.startswith(message)
    assert len(details) < 300  # a hostile name is echoed escaped and clipped
    assert received == []


async def test_a_node_whose_group_was_deleted_is_refused_before_any_snapshot_byte(
    admin: Admin, control_plane: RunningControlPlane, private_tmp: Path
) -> None:
    """Its certificate still names the group; the group is gone: nothing is sent."""
    await _fleet(admin)
    await control_plane.ensure_group("short-lived")
    tls = await control_plane.enroll("orphan-1", private_tmp / "orphan-1", group="short-lived")
    await admin.DeleteNodeGroup(admin_pb2.DeleteNodeGroupRequest(name="short-lived"))
    received, code, details = await attempt_sync(control_plane.node_address, tls, "orphan-1")
    assert received == []
    assert code == grpc.StatusCode.NOT_FOUND
    assert details == "hello.scope.node_group: node group 'short-lived' not found"


async def test_a_node_fed_another_groups_envelope_nacks_it_for_its_scope(
    admin: Admin, control_plane: RunningControlPlane, private_tmp: Path, nodes: list[DataPlaneNode]
) -> None:
    await _fleet(admin)
    await _vault(admin)
    cloud = await _start(nodes, await loopback_node(control_plane, "cloud-1", private_tmp))
    cloud_v = (await _newest(admin, "default")).version
    await cloud.store.wait_for_version(cloud_v, timeout=15)
    # vault's envelope is validly signed by the same key and its version is far ahead of
    # default's, so only the scope check stands between it and the cloud node.
    for _ in range(cloud_v + 1):
        await admin.UpdateNodeGroup(admin_pb2.UpdateNodeGroupRequest(name="vault", deployment="d"))
        await admin.UpdateNodeGroup(admin_pb2.UpdateNodeGroupRequest(name="vault", deployment=""))
    foreign = await admin.ExportSnapshot(admin_pb2.ExportSnapshotRequest(group="vault"))
    foreign_version = (await _newest(admin, "vault")).version
    assert foreign_version > cloud_v
    assert control_plane.cp.sync is not None
    assert control_plane.cp.sync.inject(foreign, "cloud-1") == 1

    async def refused() -> admin_pb2.Node:
        by_id = {n.node_id: n for n in (await admin.ListNodes(admin_pb2.ListNodesRequest())).nodes}
        assert by_id["cloud-1"].last_nack_version == foreign_version
        return by_id["cloud-1"]

    node = await eventually(refused, message="the cloud node to refuse vault's snapshot")
    assert node.last_nack_reason.startswith("scope: snapshot is for")
    assert "node_group=vault" in node.last_nack_reason
    assert cloud.store.version == cloud_v
    assert node.applied_version == cloud_v


async def test_explain_route_decides_on_the_groups_snapshot_in_its_site(admin: Admin) -> None:
    await _fleet(admin)
    await _vault(admin)
    await admin.ApplyPolicy(
        admin_pb2.ApplyPolicyRequest(
            tenant="bunker", document="allowed_models: [small, local]\ndefault_model: small"
        )
    )
    # As a vault node (air-gapped in site-a, the group's mode and site): small only through site-a.
    explained = await admin.ExplainRoute(admin_pb2.ExplainRouteRequest(tenant="bunker", node_group="vault"))
    assert list(explained.plan) == ["small@vllm-a", "local@vllm-a"]
    # As a default node: the public deployment is there too.
    explained = await admin.ExplainRoute(admin_pb2.ExplainRouteRequest(tenant="bunker"))
    assert "small@openai" in list(explained.plan)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await admin.ExplainRoute(admin_pb2.ExplainRouteRequest(tenant="bunker", node_group="ghost"))
    assert (info.value.code(), info.value.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "node_group: node group 'ghost' not found",
    )
    # A tenant the group does not see is not in its snapshot.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await admin.ExplainRoute(admin_pb2.ExplainRouteRequest(tenant="acme", node_group="vault"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
