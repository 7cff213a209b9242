"""Snapshots at the control plane / data plane boundary: compiles run off the event
loop, the newest version is compiled once for dry runs, and re-issue is a change."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from controlplane.db.models import Snapshot
from controlplane.db.session import create_engine, session_factory
from controlplane.errors import StoredSnapshotInvalid
from controlplane.keys import Kek, Keyring, ensure_signing_key
from controlplane.repositories import snapshots as snapshot_repo
from controlplane.services.base import UnitOfWork
from controlplane.services.snapshots import SnapshotService
from controlplane.snapshots import compiler
from controlplane.snapshots.publish import Publication, SnapshotPublisher
from dataplane.config.model import RuntimeConfig
from dataplane.snapshot import compiled
from dataplane.snapshot.compile import decode_snapshot
from dataplane.snapshot.delta import Changes
from dataplane.snapshot.layout import Layout
from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.api.infer.v1 import infer_pb2
from signalbox.wallclock import utc_now
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
        real_advance = compiled.Compiled.advance

        def seen(payload: bytes) -> None:
            self.threads.append(threading.get_ident())
            self.digests.append(hashlib.sha256(payload).digest())
            self.loop.call_soon_threadsafe(self.started.set)
            # Were this the loop's thread, nothing could set ``release`` while we wait.
            if self.hold and not self.release.wait(TIMEOUT):
                raise AssertionError("the event loop served nothing while a snapshot compiled")

        def spy(payload: bytes) -> RuntimeConfig:
            seen(payload)
            return real(payload)

        def advance(
            base: compiled.Compiled, new: Layout, changes: Changes, payload: bytes, digest: bytes
        ) -> compiled.Compiled:
            # Compiling by difference is compiling too: it must be off the loop as well.
            seen(payload)
            return real_advance(base, new, changes, payload, digest)

        monkeypatch.setattr(compiler, "compile_payload", spy)
        monkeypatch.setattr(compiled, "compile_payload", spy)
        monkeypatch.setattr(compiled.Compiled, "advance", advance)
        return self


@pytest.fixture
async def compiles(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[CompileSpy]:
    spy = CompileSpy(asyncio.get_running_loop())
    yield spy.install(monkeypatch)
    spy.release.set()


@dataclass
class Replica:
    """The snapshot service of a second replica on the same database: its own
    compiled-config cache, and (unlike the app's) no after-commit seeding of it."""

    service: SnapshotService
    published: list[Publication]

    async def stored(self, version: int) -> Snapshot:
        async with self.service.uow.read() as session:
            row = await snapshot_repo.get(session, version)
        assert row is not None
        return row


@asynccontextmanager
async def _replica(
    database_url: str, keyring: Keyring, ttl: timedelta, host_clock: Callable[[], datetime] = utc_now
) -> AsyncIterator[Replica]:
    engine = create_engine(database_url)
    try:
        publisher = SnapshotPublisher(keyring, ttl, host_clock=host_clock)
        published: list[Publication] = []
        uow = UnitOfWork(session_factory(engine), publisher, after_commit=[published.append])
        yield Replica(SnapshotService(uow), published)
    finally:
        await engine.dispose()


@pytest.fixture
async def replica(control_plane: RunningControlPlane) -> AsyncIterator[Replica]:
    assert control_plane.cp.keyring is not None
    ttl = control_plane.cp.settings.snapshot_ttl
    async with _replica(control_plane.database_url, control_plane.cp.keyring, ttl) as running:
        yield running


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


# ---- the newest version compiled once ----


async def _policy(admin: Admin, document: str) -> bytes:
    """Apply the tenant's policy; the payload hash of the snapshot that carries it."""
    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant="acme", document=document))
    return await _newest_digest(admin)


async def test_explain_route_uses_what_the_publisher_compiled(admin: Admin, compiles: CompileSpy) -> None:
    await admin.seed()
    await _policy(admin, '{"default_model": "large"}')
    compiles.digests.clear()
    assert (await _explain(admin)).decision.chosen_model == "large"
    await _explain(admin)
    assert compiles.digests == []  # compiled when it was published

    digest = await _policy(admin, '{"default_model": "small", "allowed_models": ["small"]}')
    assert compiles.digests == [digest]  # the candidate's check
    assert (await _explain(admin)).decision.chosen_model == "small"
    await _explain(admin)
    assert compiles.digests == [digest]


async def test_a_dry_run_compiles_each_new_version_once(
    admin: Admin, replica: Replica, compiles: CompileSpy
) -> None:
    await admin.seed()
    first = await _policy(admin, '{"default_model": "large"}')
    compiles.digests.clear()
    config, _ = await replica.service.runtime_for("acme")
    again, _ = await replica.service.runtime_for("acme")
    assert config is again
    assert config.payload_sha256 == first
    assert compiles.digests == [first]

    second = await _policy(admin, '{"default_model": "small", "allowed_models": ["small"]}')
    compiles.digests.clear()
    # Concurrent dry runs of a new version wait for one compile.
    (one, _), (other, _) = await asyncio.gather(
        replica.service.runtime_for("acme"), replica.service.runtime_for("acme")
    )
    assert one is other
    assert one.payload_sha256 == second
    assert compiles.digests == [second]


async def _store_unreadable(admin: Admin, replica: Replica) -> tuple[int, bytes]:
    """Seed, then store a newest version whose payload is not a snapshot (as another build
    might have); returns its version and payload."""
    await admin.seed()
    version = await admin.latest_version() + 1
    payload = b"\xff not a snapshot"
    async with replica.service.uow.sessions() as session, session.begin():
        await snapshot_repo.add(
            session,
            Snapshot(
                version=version,
                # The payload is stored once, inside the envelope.
                envelope=snapshot_pb2.SignedEnvelope(payload=payload).SerializeToString(),
                sha256=hashlib.sha256(payload).digest(),
                signing_key_id="k",
                created_at=datetime.now(UTC),
            ),
        )
    return version, payload


async def test_a_stored_snapshot_this_build_cannot_compile_fails_the_dry_run_precondition(
    admin: Admin, replica: Replica
) -> None:
    """E.g. after a downgrade: the newest stored payload is not what this code can serve."""
    await _store_unreadable(admin, replica)
    with pytest.raises(StoredSnapshotInvalid) as info:
        await replica.service.runtime_for("acme")
    assert info.value.field == "$"
    with pytest.raises(grpc.aio.AioRpcError) as call:
        await _explain(admin)
    assert call.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (call.value.details() or "").startswith("$: payload is not a Snapshot message")


# ---- re-issue is a change like any other ----


async def test_a_fresh_snapshot_is_not_reissued(admin: Admin, replica: Replica) -> None:
    before = await admin.latest_version()
    assert await replica.service.reissue_if_aging() is None
    assert replica.published == []
    assert await admin.latest_version() == before


async def test_an_aging_snapshot_is_reissued_through_the_unit_of_work(
    admin: Admin, control_plane: RunningControlPlane
) -> None:
    before = await admin.latest_version()
    assert control_plane.cp.keyring is not None
    async with _replica(control_plane.database_url, control_plane.cp.keyring, timedelta(0)) as aging:
        version = await aging.service.reissue_if_aging()
        assert version == before + 1
        assert [p.version for p in aging.published] == [version]
        assert aging.published[0].published["default"].config.version == version
        row = await aging.stored(version)
        assert (row.reason, row.created_by) == ("re-issued before expiry", "admin:system")
    assert await admin.latest_version() == version


async def _signing_key(database_url: str) -> Keyring:
    """A signing key in an empty database, as a first control plane makes it."""
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session, session.begin():
            await ensure_signing_key(session, Kek(b"k" * 32))
    finally:
        await engine.dispose()
    return Keyring(Kek(b"k" * 32))


async def test_the_first_snapshot_is_issued_as_the_initial_one(database_url: str) -> None:
    keyring = await _signing_key(database_url)
    async with _replica(database_url, keyring, timedelta(days=1)) as first:
        assert await first.service.reissue_if_aging() == 1
        assert (await first.stored(1)).reason == "initial snapshot"
        assert await first.service.reissue_if_aging() is None
        assert [p.version for p in first.published] == [1]


async def test_reissue_before_expiry_is_per_group(admin: Admin, control_plane: RunningControlPlane) -> None:
    await admin.CreateNodeGroup(admin_pb2.CreateNodeGroupRequest(group=admin_pb2.NodeGroup(name="vault")))
    default_before = await admin.latest_version()
    assert control_plane.cp.keyring is not None
    async with _replica(control_plane.database_url, control_plane.cp.keyring, timedelta(days=30)) as fresh:
        assert await fresh.service.reissue_if_aging() is None  # every group's newest is fresh
    async with _replica(control_plane.database_url, control_plane.cp.keyring, timedelta(0)) as aging:
        assert await aging.service.reissue_if_aging() == default_before + 1
        (publication,) = aging.published
        assert {g: p.version for g, p in publication.published.items()} == {
            "default": default_before + 1,
            "vault": 2,
        }
        row = await aging.stored(default_before + 1)
        assert row.reason == "re-issued before expiry"
    listed = await admin.ListSnapshots(admin_pb2.ListSnapshotsRequest(group="vault"))
    assert [(s.version, s.reason) for s in listed.snapshots] == [
        (2, "re-issued before expiry"),
        (1, "create node group vault"),
    ]


async def test_a_change_after_an_unreadable_stored_snapshot_still_publishes(
    admin: Admin, replica: Replica
) -> None:
    """Comparing with the newest stored payload must not depend on it being readable."""
    version, payload = await _store_unreadable(admin, replica)
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="after"))
    newest = await admin.GetSnapshot(admin_pb2.GetSnapshotRequest())
    assert newest.version == version + 1
    assert (await replica.stored(version + 1)).previous_hash == hashlib.sha256(payload).digest()


async def test_snapshots_are_dated_by_the_database_clock_not_a_replicas_own(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A replica dated snapshots by its host's clock: one booted at 1970 signed snapshots that
    were expired on arrival (every node refused every change); one far ahead called every
    group's newest aging and re-issued it at each check. The database's clock dates them."""
    keyring = await _signing_key(database_url)
    ttl = timedelta(days=30)
    async with _replica(database_url, keyring, ttl, lambda: utc_now() - timedelta(days=20_000)) as behind:
        assert await behind.service.reissue_if_aging() == 1
        header = decode_snapshot(
            snapshot_pb2.SignedEnvelope.FromString((await behind.stored(1)).envelope).payload
        )
    created = header.created_at.ToDatetime(UTC)
    assert abs((created - datetime.now(UTC)).total_seconds()) < 60, created
    assert header.expires_at.ToDatetime(UTC) - created == ttl
    assert "this host's clock is -1728000" in caplog.text
    async with _replica(database_url, keyring, ttl, lambda: utc_now() + ttl) as ahead:
        assert await ahead.service.reissue_if_aging() is None  # fresh by the database's clock
        assert ahead.published == []
