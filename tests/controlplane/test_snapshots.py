"""Snapshots at the control plane / data plane boundary: compiles run off the event loop."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from controlplane.db.session import create_engine, session_factory
from controlplane.services.base import UnitOfWork
from controlplane.services.snapshots import SnapshotService
from controlplane.snapshots import compiler
from controlplane.snapshots.publish import PublishedSnapshot, SnapshotPublisher
from dataplane.config.model import RuntimeConfig
from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.infer.v1 import infer_pb2
from tests.controlplane.conftest import TIMEOUT, Admin
from tests.fixtures.postgres import RunningControlPlane


@dataclass
class CompileSpy:
    """Wraps the data plane's compiler: records each call's thread and payload hash.

    With ``hold`` set, each compile waits (in its own thread) until ``release`` is set.
    """

    loop: asyncio.AbstractEventLoop
    hold: bool = False
    threads: list[int] = field(default_factory=list)
    digests: list[bytes] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> CompileSpy:
        real = compiler.compile_payload

        def spy(payload: bytes) -> RuntimeConfig:
            self.threads.append(threading.get_ident())
            self.digests.append(hashlib.sha256(payload).digest())
            self.loop.call_soon_threadsafe(self.started.set)
            # Were this the loop's thread, nothing could set ``release`` while we wait.
            if self.hold and not self.release.wait(TIMEOUT):
                raise AssertionError("the event loop served nothing while a snapshot compiled")
            return real(payload)

        monkeypatch.setattr(compiler, "compile_payload", spy)
        return self


@pytest.fixture
async def compiles(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[CompileSpy]:
    spy = CompileSpy(asyncio.get_running_loop())
    yield spy.install(monkeypatch)
    spy.release.set()


@dataclass
class Replica:
    """The snapshot service of a second replica on the same database."""

    service: SnapshotService
    published: list[PublishedSnapshot]


@pytest.fixture
async def replica(control_plane: RunningControlPlane) -> AsyncIterator[Replica]:
    settings, signer = control_plane.cp.settings, control_plane.cp.signer
    assert signer is not None
    engine = create_engine(control_plane.database_url)
    try:
        publisher = SnapshotPublisher(signer, settings.snapshot_ttl, settings.scope)
        published: list[PublishedSnapshot] = []
        uow = UnitOfWork(session_factory(engine), publisher, after_commit=[published.append])
        yield Replica(SnapshotService(uow), published)
    finally:
        await engine.dispose()


async def _explain(admin: Admin) -> admin_pb2.ExplainRouteResponse:
    response: admin_pb2.ExplainRouteResponse = await admin.ExplainRoute(
        admin_pb2.ExplainRouteRequest(tenant="acme", request=infer_pb2.InferRequest())
    )
    return response


async def _newest_digest(admin: Admin) -> bytes:
    info = await admin.GetSnapshot(admin_pb2.GetSnapshotRequest())
    return bytes(info.payload_sha256)


# ---- off the event loop ----


async def test_a_change_compiles_its_candidate_off_the_event_loop(admin: Admin, compiles: CompileSpy) -> None:
    compiles.hold = True
    change = asyncio.ensure_future(admin.CreateTenant(admin_pb2.CreateTenantRequest(name="held")))
    await asyncio.wait_for(compiles.started.wait(), TIMEOUT)

    # The candidate is still compiling (held), and the loop serves another call meanwhile.
    listed = await admin.ListTenants(admin_pb2.ListTenantsRequest())
    assert not change.done()
    assert list(listed.tenants) == []  # the change has not committed yet

    compiles.release.set()
    created = await change
    assert created.name == "held"
    assert compiles.threads
    assert threading.get_ident() not in compiles.threads


async def test_a_dry_run_compiles_the_newest_snapshot_off_the_event_loop(
    admin: Admin, replica: Replica, compiles: CompileSpy
) -> None:
    await admin.seed()
    compiles.threads.clear()
    compiles.started.clear()
    compiles.hold = True
    dry_run = asyncio.ensure_future(replica.service.runtime_for("acme"))
    await asyncio.wait_for(compiles.started.wait(), TIMEOUT)

    assert await admin.latest_version() > 0  # served while the compile is held
    assert not dry_run.done()

    compiles.release.set()
    _, tenant = await dry_run
    assert tenant.name == "acme"
    assert len(compiles.threads) == 1
    assert threading.get_ident() not in compiles.threads
