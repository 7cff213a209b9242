"""Group commit of config changes (controlplane.services.base): concurrent changes share
one transaction and one snapshot, each still gets its own outcome, and a refused change
leaves nothing behind."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from controlplane.db.session import create_engine, session_factory
from controlplane.errors import BatchAborted, StillReferenced
from controlplane.services.base import SYSTEM, UnitOfWork
from controlplane.services.models import ModelService
from controlplane.services.tenants import TenantService
from controlplane.snapshots.publish import Publication, SnapshotPublisher
from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.config.v1 import snapshot_pb2
from tests.controlplane.conftest import Admin
from tests.fixtures.postgres import RunningControlPlane

N = 24


async def _outcome(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def _snapshot(admin: Admin) -> snapshot_pb2.Snapshot:
    envelope = await admin.ExportSnapshot(admin_pb2.ExportSnapshotRequest())
    return snapshot_pb2.Snapshot.FromString(envelope.payload)


async def _tenant_names(admin: Admin) -> set[str]:
    return {t.name for t in (await admin.ListTenants(admin_pb2.ListTenantsRequest())).tenants}


async def test_concurrent_changes_share_versions_and_all_land_in_the_snapshot(admin: Admin) -> None:
    await admin.seed()
    before = await admin.latest_version()
    replies = await asyncio.gather(
        *(admin.CreateTenant(admin_pb2.CreateTenantRequest(name=f"t{i}")) for i in range(N)),
        # A change with its own error in the middle of the batch: only it fails.
        _outcome(admin.UpdateTenant(admin_pb2.UpdateTenantRequest(tenant="nobody", tier="x"))),
    )
    assert replies[-1] == grpc.StatusCode.NOT_FOUND
    after = await admin.latest_version()
    assert 1 <= after - before < N, "concurrent changes were not batched"
    snapshot = await _snapshot(admin)
    assert snapshot.version == after
    assert {f"t{i}" for i in range(N)} <= {t.name for t in snapshot.tenants}
    info = await admin.GetSnapshot(admin_pb2.GetSnapshotRequest())
    assert info.created_by == "admin:tests"


async def test_a_refused_change_in_a_batch_is_refused_to_its_admin_and_leaves_nothing(admin: Admin) -> None:
    await admin.seed()
    await admin.ApplyPolicy(
        admin_pb2.ApplyPolicyRequest(tenant="acme", document=json.dumps({"default_model": "small"}))
    )
    before = await admin.latest_version()

    async def create(i: int) -> grpc.StatusCode:
        return await _outcome(admin.CreateTenant(admin_pb2.CreateTenantRequest(name=f"b{i}")))

    async def delete_referenced() -> tuple[grpc.StatusCode, str]:
        try:
            await admin.DeleteModel(admin_pb2.DeleteModelRequest(model="small"))
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
        return grpc.StatusCode.OK, ""

    half = N // 2
    outcomes = await asyncio.gather(
        *(create(i) for i in range(half)), delete_referenced(), *(create(i) for i in range(half, N))
    )
    created = {
        f"b{i}" for i, code in enumerate(outcomes[:half] + outcomes[half + 1 :]) if code == grpc.StatusCode.OK
    }
    aborted = {
        f"b{i}"
        for i, code in enumerate(outcomes[:half] + outcomes[half + 1 :])
        if code == grpc.StatusCode.ABORTED
    }
    # The compiler's refusal, attributed to this change with the referrer.
    assert outcomes[half][0] == grpc.StatusCode.FAILED_PRECONDITION
    assert "policy of tenant 'acme'" in outcomes[half][1]
    assert created | aborted == {f"b{i}" for i in range(N)}, outcomes
    # Nothing of the refused change nor of an aborted one stays; everything else does.
    models = {m.alias for m in (await admin.ListModels(admin_pb2.ListModelsRequest())).models}
    assert "small" in models
    names = await _tenant_names(admin)
    assert created <= names
    assert not (aborted & names)
    snapshot = await _snapshot(admin)
    assert "small" in {m.alias for m in snapshot.models}
    assert created <= {t.name for t in snapshot.tenants}
    assert await admin.latest_version() - before <= len(created)

    # An aborted change is safe to retry.
    for name in sorted(aborted):
        await admin.CreateTenant(admin_pb2.CreateTenantRequest(name=name))
    assert {f"b{i}" for i in range(N)} <= {t.name for t in (await _snapshot(admin)).tenants}


async def test_the_change_that_breaks_a_batch_is_found_and_those_after_it_are_rolled_back(
    control_plane: RunningControlPlane, admin: Admin
) -> None:
    """In-process, so the order within one batch is known: t0, t1, the refused delete, t2, t3."""
    await admin.seed()
    await admin.ApplyPolicy(
        admin_pb2.ApplyPolicyRequest(tenant="acme", document=json.dumps({"default_model": "small"}))
    )
    before = await admin.latest_version()
    assert control_plane.cp.keyring is not None
    engine = create_engine(control_plane.database_url)
    try:
        published: list[Publication] = []
        publisher = SnapshotPublisher(control_plane.cp.keyring, control_plane.cp.settings.snapshot_ttl)
        uow = UnitOfWork(session_factory(engine), publisher, after_commit=[published.append])
        tenants, models = TenantService(uow), ModelService(uow)
        # Tasks start in creation order, and all of them join the batch before it runs.
        first = [asyncio.create_task(tenants.create(SYSTEM, name=f"t{i}")) for i in range(2)]
        delete = asyncio.create_task(models.delete(SYSTEM, "small"))
        later = [asyncio.create_task(tenants.create(SYSTEM, name=f"t{i}")) for i in range(2, 4)]
        versions = {(await task)[1] for task in first}
        with pytest.raises(StillReferenced, match="policy of tenant 'acme'"):
            await delete
        for task in later:
            with pytest.raises(BatchAborted, match="nothing was written, retry"):
                await task
    finally:
        await engine.dispose()
    assert versions == {before + 1}
    assert [p.version for p in published] == [before + 1]
    assert [p.published["default"].version for p in published] == [before + 1]
    assert await admin.latest_version() == before + 1
    names = await _tenant_names(admin)
    assert {"t0", "t1"} <= names
    assert not ({"t2", "t3"} & names)
    snapshot = await _snapshot(admin)
    assert "small" in {m.alias for m in snapshot.models}
    assert {"t0", "t1"} <= {t.name for t in snapshot.tenants}
    info = await admin.GetSnapshot(admin_pb2.GetSnapshotRequest())
    assert info.reason.startswith("2 changes: create tenant t0; create tenant t1")
