"""Node groups over the real Admin API on real PostgreSQL: CRUD and its refusals, a group
change that would break a policy, and per-group history, rollback, retention and export."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.api.common.v1 import common_pb2
from signalbox.api.config.v1 import snapshot_pb2
from tests.controlplane.conftest import Admin, SyncNode
from tests.fixtures.postgres import RunningControlPlane, cp_settings, running_control_plane, sql_rows
from tests.helpers import eventually

AIR_GAPPED = common_pb2.DEPLOYMENT_MODE_AIR_GAPPED


async def _code(awaitable: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable  # type: ignore[misc]
    return info.value.code(), info.value.details() or ""


def _create(name: str, **fields: object) -> admin_pb2.CreateNodeGroupRequest:
    return admin_pb2.CreateNodeGroupRequest(group=admin_pb2.NodeGroup(name=name, **fields))  # type: ignore[arg-type]


async def _versions(admin: Admin, group: str) -> list[int]:
    listed = await admin.ListSnapshots(admin_pb2.ListSnapshotsRequest(group=group, limit=1000))
    return [s.version for s in listed.snapshots]


async def _newest(admin: Admin, group: str) -> int:
    return int((await admin.GetSnapshot(admin_pb2.GetSnapshotRequest(group=group))).version)


async def _two_groups(admin: Admin) -> None:
    """acme is seen by group "cloud", bunker by group "vault"; default sees both."""
    await admin.seed("acme")
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="bunker"))
    await admin.CreateNodeGroup(_create("cloud", tenants=admin_pb2.Selection(names=["acme"])))
    await admin.CreateNodeGroup(_create("vault", tenants=admin_pb2.Selection(names=["bunker"])))


# ---- CRUD ----


async def test_group_crud_lists_by_name_and_publishes_only_what_changed(admin: Admin) -> None:
    await admin.seed("acme")
    default_before = await admin.latest_version()
    created = await admin.CreateNodeGroup(
        _create(
            "vault",
            mode=AIR_GAPPED,
            site="site-a",
            deployment="eu",
            tenants=admin_pb2.Selection(names=["acme"]),
            models=admin_pb2.Selection(names=["small"]),
        )
    )
    assert (created.name, created.mode, created.site, created.deployment) == (
        "vault",
        AIR_GAPPED,
        "site-a",
        "eu",
    )
    assert list(created.tenants.names) == ["acme"]
    assert not created.tenants.all
    assert created.providers.all
    assert created.snapshot_version == 1  # its own chain starts at 1
    # Creating a group changes no other group's content: default got no new version.
    assert await admin.latest_version() == default_before

    listed = await admin.ListNodeGroups(admin_pb2.ListNodeGroupsRequest())
    assert [g.name for g in listed.groups] == ["default", "vault"]
    default = listed.groups[0]
    assert default.mode == common_pb2.DEPLOYMENT_MODE_CLOUD
    assert (default.tenants.all, default.providers.all, default.models.all) == (True, True, True)

    # An update changes only what it sets.
    await admin.UpdateNodeGroup(
        admin_pb2.UpdateNodeGroupRequest(name="vault", models=admin_pb2.Selection(all=True), site="site-b")
    )
    shown = await admin.GetNodeGroup(admin_pb2.GetNodeGroupRequest(name="vault"))
    assert (shown.site, shown.models.all, list(shown.tenants.names)) == ("site-b", True, ["acme"])
    assert shown.snapshot_version == 2

    response = await admin.DeleteNodeGroup(admin_pb2.DeleteNodeGroupRequest(name="vault"))
    assert response.snapshot_version == default_before
    code, message = await _code(admin.GetNodeGroup(admin_pb2.GetNodeGroupRequest(name="vault")))
    assert (code, message) == (grpc.StatusCode.NOT_FOUND, "name: node group 'vault' not found")
    # Its history stays readable, and the name re-created continues the chain.
    assert await _versions(admin, "vault") == [2, 1]
    again = await admin.CreateNodeGroup(_create("vault", tenants=admin_pb2.Selection(names=["acme"])))
    assert again.snapshot_version == 3


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (
            _create("Bad_Name"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "group.name: must be 1..63 characters of a-z, 0-9 and '-' (got 'Bad_Name')",
        ),
        (
            _create("a" * 64),
            grpc.StatusCode.INVALID_ARGUMENT,
            "group.name: must be 1..63 characters of a-z, 0-9 and '-' (got "
            "'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa')",
        ),
        (
            _create(""),
            grpc.StatusCode.INVALID_ARGUMENT,
            "group.name: must be 1..63 characters of a-z, 0-9 and '-' (got '')",
        ),
        (
            _create("vault", mode=AIR_GAPPED),
            grpc.StatusCode.INVALID_ARGUMENT,
            "group.site: required for an air-gapped group (its nodes call only that site)",
        ),
        (
            _create("vault", mode=99),
            grpc.StatusCode.INVALID_ARGUMENT,
            "group.mode: must be cloud, on-prem or air-gapped",
        ),
        (
            _create("vault", site="bad site"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "group.site: must start with a letter or digit and use only letters, digits, '.', '_', ':', '-'",
        ),
        (
            _create("vault", tenants=admin_pb2.Selection(names=["ghost"])),
            grpc.StatusCode.NOT_FOUND,
            "group.tenants.names[0]: tenant 'ghost' not found",
        ),
        (
            _create("vault", models=admin_pb2.Selection(names=["small", "small"])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "group.models.names[1]: model 'small' is listed twice",
        ),
        (
            _create("vault", providers=admin_pb2.Selection()),
            grpc.StatusCode.INVALID_ARGUMENT,
            "group.providers.names: must name at least one (or select all)",
        ),
        (
            _create("vault", providers=admin_pb2.Selection(all=True, names=["sim"])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "group.providers.names: must be empty when all is set",
        ),
        (
            _create("default"),
            grpc.StatusCode.ALREADY_EXISTS,
            "node group 'default' already exists",
        ),
    ],
)
async def test_a_bad_group_is_refused_precisely_and_nothing_is_written(
    admin: Admin, request_: admin_pb2.CreateNodeGroupRequest, code: grpc.StatusCode, message: str
) -> None:
    await admin.seed("acme")
    before = await admin.latest_version()
    assert await _code(admin.CreateNodeGroup(request_)) == (code, message)
    listed = await admin.ListNodeGroups(admin_pb2.ListNodeGroupsRequest())
    assert [g.name for g in listed.groups] == ["default"]
    assert await admin.latest_version() == before


async def test_updates_and_deletes_that_cannot_be_are_refused(
    admin: Admin, control_plane: RunningControlPlane, private_tmp: Path
) -> None:
    await admin.seed("acme")
    await admin.CreateNodeGroup(_create("vault", mode=AIR_GAPPED, site="site-a"))
    refusals = [
        (
            admin.UpdateNodeGroup(admin_pb2.UpdateNodeGroupRequest(name="ghost", site="x")),
            (grpc.StatusCode.NOT_FOUND, "name: node group 'ghost' not found"),
        ),
        (
            admin.UpdateNodeGroup(admin_pb2.UpdateNodeGroupRequest(name="vault", site="")),
            (
                grpc.StatusCode.INVALID_ARGUMENT,
                "group.site: required for an air-gapped group (its nodes call only that site)",
            ),
        ),
        (
            admin.UpdateNodeGroup(
                admin_pb2.UpdateNodeGroupRequest(name="vault", tenants=admin_pb2.Selection(names=["ghost"]))
            ),
            (grpc.StatusCode.NOT_FOUND, "tenants.names[0]: tenant 'ghost' not found"),
        ),
        (
            admin.DeleteNodeGroup(admin_pb2.DeleteNodeGroupRequest(name="default")),
            (
                grpc.StatusCode.INVALID_ARGUMENT,
                "name: the default group cannot be deleted: nodes that name no group run it",
            ),
        ),
        (
            admin.DeleteNodeGroup(admin_pb2.DeleteNodeGroupRequest(name="ghost")),
            (grpc.StatusCode.NOT_FOUND, "name: node group 'ghost' not found"),
        ),
    ]
    for call, expected in refusals:
        assert await _code(call) == expected
    shown = await admin.GetNodeGroup(admin_pb2.GetNodeGroupRequest(name="vault"))
    assert (shown.site, shown.tenants.all, shown.snapshot_version) == ("site-a", True, 1)

    # A group its nodes still run cannot go; once they are gone it can.
    tls = await control_plane.enroll("vault-1", private_tmp / "vault-1", group="vault")
    node = SyncNode(
        control_plane,
        "vault-1",
        tls,
        scope=snapshot_pb2.Scope(node_group="vault", site="site-a"),
        mode=AIR_GAPPED,
    )
    await node.connect()
    try:
        envelope = await node.next_envelope()
        assert node.verified(envelope).scope.node_group == "vault"
        code, message = await _code(admin.DeleteNodeGroup(admin_pb2.DeleteNodeGroupRequest(name="vault")))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert message == (
            "node group 'vault' is still run by 1 connected node(s): vault-1; "
            "stop them or move them to another group first"
        )
    finally:
        await node.close()

    async def gone() -> bool:
        nodes = (await admin.ListNodes(admin_pb2.ListNodesRequest(group="vault"))).nodes
        return [n.connected for n in nodes] == [False]

    await eventually(gone, message="vault-1 to be marked disconnected")
    await admin.DeleteNodeGroup(admin_pb2.DeleteNodeGroupRequest(name="vault"))
    code, message = await _code(admin.ListNodes(admin_pb2.ListNodesRequest(group="vault")))
    assert (code, message) == (grpc.StatusCode.NOT_FOUND, "group: node group 'vault' not found")


async def test_a_viewer_reads_groups_and_every_write_is_audited(
    admin: Admin, control_plane: RunningControlPlane
) -> None:
    await admin.CreateNodeGroup(_create("edge"))
    await admin.UpdateNodeGroup(admin_pb2.UpdateNodeGroupRequest(name="edge", deployment="eu"))
    await _code(admin.CreateNodeGroup(_create("edge")))
    assert control_plane.cp.admin is not None
    _, token = await control_plane.cp.admin.create_token("auditor", role="auditor")
    async with grpc.aio.insecure_channel(control_plane.address) as channel:
        viewer = Admin(admin_pb2_grpc.AdminServiceStub(channel), (("authorization", f"Bearer {token}"),))
        listed = await viewer.ListNodeGroups(admin_pb2.ListNodeGroupsRequest())
        assert [g.name for g in listed.groups] == ["default", "edge"]
        assert (await viewer.GetNodeGroup(admin_pb2.GetNodeGroupRequest(name="edge"))).deployment == "eu"
        # One at a time (a grpc.aio call starts when it is made), so the audit order is known.
        for call in (
            lambda: viewer.CreateNodeGroup(_create("other")),
            lambda: viewer.UpdateNodeGroup(admin_pb2.UpdateNodeGroupRequest(name="edge", deployment="us")),
            lambda: viewer.DeleteNodeGroup(admin_pb2.DeleteNodeGroupRequest(name="edge")),
        ):
            code, message = await _code(call())
            assert code == grpc.StatusCode.PERMISSION_DENIED
            assert "auditor" in message
    rows = sql_rows(
        control_plane.database_url,
        "SELECT actor, method, target, result FROM audit_log WHERE method LIKE '%NodeGroup%' ORDER BY id",
    )
    assert [tuple(r) for r in rows] == [
        ("admin:tests", "CreateNodeGroup", "group=edge", "OK"),
        ("admin:tests", "UpdateNodeGroup", "name=edge", "OK"),
        ("admin:tests", "CreateNodeGroup", "group=edge", "ALREADY_EXISTS"),
        ("admin:auditor", "ListNodeGroups", "", "OK"),
        ("admin:auditor", "GetNodeGroup", "name=edge", "OK"),
        ("admin:auditor", "CreateNodeGroup", "group=other", "PERMISSION_DENIED"),
        ("admin:auditor", "UpdateNodeGroup", "name=edge", "PERMISSION_DENIED"),
        ("admin:auditor", "DeleteNodeGroup", "name=edge", "PERMISSION_DENIED"),
    ]


# ---- a group that would break a policy ----


async def test_a_group_that_would_break_a_policy_is_refused_naming_group_policy_and_model(
    admin: Admin,
) -> None:
    await admin.seed("acme")
    await admin.ApplyPolicy(
        admin_pb2.ApplyPolicyRequest(
            tenant="acme", document="allowed_models: [small, large]\ndefault_model: small"
        )
    )
    before = await admin.latest_version()
    code, message = await _code(
        admin.CreateNodeGroup(_create("narrow", models=admin_pb2.Selection(names=["small"])))
    )
    assert (code, message) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "node group 'narrow': $.policies[0].document.allowed_models[1]: unknown model 'large' "
        "(the policy of tenant 'acme' (version 1))",
    )
    assert [g.name for g in (await admin.ListNodeGroups(admin_pb2.ListNodeGroupsRequest())).groups] == [
        "default"
    ]
    assert await admin.latest_version() == before

    # The same check guards an update, and a change elsewhere that breaks a group's view.
    await admin.CreateNodeGroup(_create("narrow", tenants=admin_pb2.Selection(names=["acme"])))
    code, message = await _code(
        admin.UpdateNodeGroup(
            admin_pb2.UpdateNodeGroupRequest(name="narrow", models=admin_pb2.Selection(names=["large"]))
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("node group 'narrow': ")
    assert "unknown model 'small'" in message
    assert (await admin.GetNodeGroup(admin_pb2.GetNodeGroupRequest(name="narrow"))).models.all


# ---- per-group history ----


async def test_history_diff_and_rollback_are_per_group(admin: Admin) -> None:
    await _two_groups(admin)
    vault_first = await _newest(admin, "vault")
    cloud_first = await _newest(admin, "cloud")
    default_first = await admin.latest_version()

    await admin.UpdateTenant(admin_pb2.UpdateTenantRequest(tenant="bunker", tier="gold"))
    # bunker is vault's (and default's), not cloud's.
    assert await _versions(admin, "vault") == [vault_first + 1, vault_first]
    assert await _versions(admin, "cloud") == [cloud_first]
    assert await admin.latest_version() == default_first + 1
    listed = await admin.ListSnapshots(admin_pb2.ListSnapshotsRequest(group="vault"))
    assert listed.snapshots[0].reason == "update tenant bunker"
    assert listed.snapshots[0].node_group == "vault"

    diff = await admin.DiffSnapshots(
        admin_pb2.DiffSnapshotsRequest(group="vault", from_version=vault_first, to_version=vault_first + 1)
    )
    assert [(c.kind, c.name, c.change) for c in diff.changes] == [("tenant", "bunker", "changed")]
    assert [(f.field, f.old, f.new) for f in diff.changes[0].fields] == [("tier", '""', '"gold"')]

    result = await admin.RollbackSnapshot(
        admin_pb2.RollbackSnapshotRequest(group="vault", version=vault_first)
    )
    assert (result.snapshot_version, result.restored_from) == (vault_first + 2, vault_first)
    assert (await admin.GetTenant(admin_pb2.GetTenantRequest(tenant="bunker"))).tier == ""
    # Cloud never saw bunker: no new version for it. acme (outside vault) is untouched.
    assert await _versions(admin, "cloud") == [cloud_first]
    assert (await admin.GetTenant(admin_pb2.GetTenantRequest(tenant="acme"))).tier == "gold"
    rolled = await admin.GetSnapshot(admin_pb2.GetSnapshotRequest(group="vault", include_content=True))
    assert rolled.reason == f"rollback to vault v{vault_first}"
    assert [(t.name, t.tier) for t in rolled.content.tenants] == [("bunker", "")]

    code, message = await _code(
        admin.RollbackSnapshot(admin_pb2.RollbackSnapshotRequest(group="cloud", version=vault_first + 1))
    )
    assert (code, message) == (grpc.StatusCode.NOT_FOUND, f"snapshot 'cloud/{vault_first + 1}' not found")
    code, message = await _code(admin.ListSnapshots(admin_pb2.ListSnapshotsRequest(group="ghost")))
    assert (code, message) == (grpc.StatusCode.NOT_FOUND, "group: node group 'ghost' not found")


async def test_a_rollback_of_a_narrowed_group_keeps_what_it_never_saw(admin: Admin) -> None:
    """A model's deployments on providers the group does not see survive its rollback."""
    await admin.seed("acme")
    await admin.CreateProvider(
        admin_pb2.CreateProviderRequest(
            provider=admin_pb2.Provider(name="other", type="simulated", base_url="http://127.0.0.1:9/v1")
        )
    )
    await admin.CreateNodeGroup(_create("sim-only", providers=admin_pb2.Selection(names=["sim"])))
    first = await _newest(admin, "sim-only")
    await admin.UpdateModel(
        admin_pb2.UpdateModelRequest(
            model=admin_pb2.Model(
                alias="small",
                capabilities=[1],
                context_window=9000,
                deployments=[
                    admin_pb2.Deployment(provider="sim", upstream_model="small-v2"),
                    admin_pb2.Deployment(provider="other", upstream_model="small-o"),
                ],
            )
        )
    )
    await admin.RollbackSnapshot(admin_pb2.RollbackSnapshotRequest(group="sim-only", version=first))
    models = {m.alias: m for m in (await admin.ListModels(admin_pb2.ListModelsRequest())).models}
    assert models["small"].context_window == 0
    assert [(d.provider, d.upstream_model) for d in models["small"].deployments] == [
        (models["small"].deployments[0].provider, "small-v1"),
        (models["small"].deployments[1].provider, "small-o"),
    ]


async def test_retention_and_export_are_per_group(database_url: str, private_tmp: Path) -> None:
    settings = cp_settings(database_url, private_tmp, snapshot_retention=2)
    async with (
        running_control_plane(settings) as running,
        grpc.aio.insecure_channel(running.address) as channel,
    ):
        admin = Admin(admin_pb2_grpc.AdminServiceStub(channel), running.metadata)
        await _two_groups(admin)
        # A vault node runs vault's current version ...
        tls = await running.enroll("vault-1", private_tmp / "vault-1", group="vault")
        node = SyncNode(running, "vault-1", tls, scope=snapshot_pb2.Scope(node_group="vault"))
        await node.connect()
        try:
            envelope = await node.next_envelope()
            running_version = node.verified(envelope).version
            node.ack(envelope, running_version)

            async def applied() -> bool:
                nodes = (await admin.ListNodes(admin_pb2.ListNodesRequest(group="vault"))).nodes
                return [n.applied_version for n in nodes] == [running_version]

            await eventually(applied, message="vault-1 to apply its version")
            # ... this one of vault leaves as a pin ...
            await admin.UpdateTenant(admin_pb2.UpdateTenantRequest(tenant="bunker", tier="t1"))
            pin = await admin.ExportSnapshot(admin_pb2.ExportSnapshotRequest(group="vault"))
            exported = snapshot_pb2.Snapshot.FromString(pin.payload)
            assert exported.scope.node_group == "vault"
            for tier in ("t2", "t3", "t4"):
                await admin.UpdateTenant(admin_pb2.UpdateTenantRequest(tenant="bunker", tier=tier))
            newest = await _newest(admin, "vault")
            assert await _versions(admin, "vault") == [newest, newest - 1, exported.version, running_version]
            # Version numbers are per group: default's own chain keeps its last 2, and the
            # numbers vault's node runs or exported protect nothing there.
            default_newest = await admin.latest_version()
            assert await _versions(admin, "default") == [default_newest, default_newest - 1]
            # cloud saw none of it: its only version stays.
            assert await _versions(admin, "cloud") == [1]
            pinned = await admin.GetSnapshot(
                admin_pb2.GetSnapshotRequest(group="vault", version=exported.version)
            )
            assert pinned.HasField("exported_at")
        finally:
            await node.close()


async def test_a_renamed_model_stays_in_the_groups_that_list_it(admin: Admin) -> None:
    await admin.seed("acme")
    await admin.CreateNodeGroup(_create("edge", models=admin_pb2.Selection(names=["small"])))
    small = {m.alias: m for m in (await admin.ListModels(admin_pb2.ListModelsRequest())).models}["small"]
    renamed = admin_pb2.Model()
    renamed.CopyFrom(small)
    renamed.alias = "tiny"
    await admin.UpdateModel(admin_pb2.UpdateModelRequest(model=renamed))
    shown = await admin.GetNodeGroup(admin_pb2.GetNodeGroupRequest(name="edge"))
    assert list(shown.models.names) == ["tiny"]
    content = (
        await admin.GetSnapshot(admin_pb2.GetSnapshotRequest(group="edge", include_content=True))
    ).content
    assert [m.alias for m in content.models] == ["tiny"]
    assert shown.snapshot_version == 2
