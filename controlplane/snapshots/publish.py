"""Turn the current database state into new signed, stored, announced snapshots: one
per node group whose content changed.

Runs inside the admin call's transaction, after its change. The full snapshot is built
once and cut per group (``scope.scope_snapshot``); a group whose cut is the same config
as its newest stored version gets no new version (its nodes hear nothing). If any
changed group's candidate does not compile with the data plane's own compiler, nothing
is signed and the whole transaction rolls back, the error naming the group. Comparing,
serialising, compiling, hashing and signing run in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import NodeGroup, Snapshot
from controlplane.errors import ConfigRejected
from controlplane.keys import MAX_TRUST_CHAIN, Keyring, Signer, sign_all, trusted_keys
from controlplane.limits import DEFAULT_GROUP
from controlplane.repositories import groups as group_repo
from controlplane.repositories import signing_keys as signing_repo
from controlplane.repositories import snapshots as snapshot_repo
from controlplane.snapshots.build import build_snapshot, timestamp
from controlplane.snapshots.compiler import SnapshotInvalid, compile_now
from controlplane.snapshots.scope import GroupView, body_of, describe, scope_snapshot
from dataplane.config.model import DeploymentMode, RuntimeConfig
from signalbox.api.config.v1 import snapshot_pb2


@dataclass(frozen=True, slots=True)
class PublishedSnapshot:
    """A stored snapshot: its group, version, payload hash, the exact envelope bytes, and
    the config its payload compiles to (as a node will compile it)."""

    version: int
    sha256: bytes
    envelope: bytes
    created_at: datetime
    config: RuntimeConfig = field(repr=False, compare=False)
    group: str = DEFAULT_GROUP


@dataclass(frozen=True, slots=True)
class Publication:
    """What one change published: a new version for each group whose content changed."""

    published: dict[str, PublishedSnapshot]
    """The new versions, by group (groups whose content did not change are absent)."""
    newest: dict[str, int]
    """Every group's newest version after the change (changed or not)."""

    @property
    def version(self) -> int:
        """The ``default`` group's newest version: what admin responses report."""
        return self.newest.get(DEFAULT_GROUP, 0)


def group_view(row: NodeGroup) -> GroupView:
    """A stored group as scoping sees it."""

    def listed(values: list[Any] | None) -> frozenset[str] | None:
        return None if values is None else frozenset(str(v) for v in values)

    return GroupView(
        name=row.name,
        mode=DeploymentMode(row.mode),
        site=row.site,
        deployment=row.deployment,
        tenants=listed(row.tenants),
        providers=listed(row.providers),
        models=listed(row.models),
    )


def check(payload: bytes) -> RuntimeConfig:
    """Compile the exact payload bytes as a node would; ``ConfigRejected`` names the path.

    CPU-heavy: call it off the event loop.
    """
    try:
        return compile_now(payload)
    except SnapshotInvalid as exc:
        raise ConfigRejected(exc.path, exc.problem) from exc


@dataclass(frozen=True, slots=True)
class _Sealed:
    group: str
    snapshot: snapshot_pb2.Snapshot
    sha256: bytes
    envelope: bytes
    config: RuntimeConfig


@dataclass(frozen=True, slots=True)
class _Candidate:
    """A group, its new header, and what its newest stored snapshot carried."""

    group: GroupView
    header: snapshot_pb2.Snapshot
    previous_body: bytes | None
    """SHA-256 of the body of the group's newest stored payload (None: it has none, or it
    is not known yet and ``previous_payload`` is given)."""
    previous_payload: bytes | None = None
    """That payload, when its body digest is not cached (its body is read off the event loop)."""


@dataclass(frozen=True, slots=True)
class _Cut:
    """A group's sealed snapshot, or only its body digest when its content did not change."""

    group: str
    body_sha256: bytes
    sealed: _Sealed | None


def _signed(signers: list[Signer], payload: bytes, chain: list[bytes]) -> bytes:
    """The envelope bytes: ``payload`` signed by every signer, carrying the trust chain."""
    envelope = sign_all(signers, payload)
    for statement in chain:
        envelope.trust_chain.add().ParseFromString(statement)
    return envelope.SerializeToString(deterministic=True)


def _seal_all(
    full: snapshot_pb2.Snapshot,
    candidates: list[_Candidate],
    forced: frozenset[str] | None,
    signers: list[Signer],
    chain: list[bytes],
) -> list[_Cut]:
    """Cut, compare, compile, sign: the CPU-heavy part of a publish, in a worker thread."""
    # Every changed group's payload is compiled before anything is signed: one group that
    # does not compile stops them all (the transaction rolls back).
    checked = []
    cuts = []
    for candidate in candidates:
        group = candidate.group.name
        snapshot = scope_snapshot(full, candidate.group)
        body = snapshot.SerializeToString(deterministic=True)
        digest = hashlib.sha256(body).digest()
        previous = candidate.previous_body
        if candidate.previous_payload is not None:
            previous = hashlib.sha256(body_of(candidate.previous_payload)).digest()
        unforced = not (forced is None or group in forced)
        if previous is not None and unforced and previous == digest:
            cuts.append(_Cut(group, digest, None))  # the same config: its nodes hear nothing
            continue
        # Deterministic serialization writes fields in number order, so the header (fields
        # 1-4) followed by the body is exactly the whole message serialized: these bytes are
        # checked, hashed, signed and stored.
        payload = candidate.header.SerializeToString(deterministic=True) + body
        try:
            config = check(payload)
        except ConfigRejected as exc:
            where = describe(snapshot, exc.field)
            raise ConfigRejected(exc.field, exc.problem, where, group=group) from exc
        checked.append((candidate, digest, payload, config))
    for c, digest, payload, config in checked:
        sealed = _Sealed(
            c.group.name, c.header, hashlib.sha256(payload).digest(), _signed(signers, payload, chain), config
        )
        cuts.append(_Cut(c.group.name, digest, sealed))
    return cuts


async def full_snapshot(
    session: AsyncSession, *, now: datetime, ttl: timedelta, trusted: Sequence[tuple[str, bytes, str]] = ()
) -> snapshot_pb2.Snapshot:
    """Everything the config tables hold, for no group yet: each group's snapshot is cut from it."""
    return await build_snapshot(
        session,
        version=0,
        previous_hash=b"",
        created_at=now,
        expires_at=now + ttl,
        scope=snapshot_pb2.Scope(),
        trusted=trusted,
    )


ALL_GROUPS: frozenset[str] | None = None
"""``publish(force=ALL_GROUPS)``: a new version for every group, changed or not."""


@dataclass(frozen=True, slots=True)
class SnapshotPublisher:
    """Builds, checks, signs, stores and announces snapshots, one chain per node group."""

    keyring: Keyring
    ttl: timedelta
    retention: int = 100
    """How many of each group's newest versions are kept; older ones go unless a node still
    runs them or they were exported as a pin. At least 1: the newest is never pruned."""

    _bodies: dict[str, tuple[int, bytes, bytes]] = field(default_factory=dict, repr=False, compare=False)
    """Per group: (version, payload hash, body hash) of a snapshot this replica stored or
    read. Used only when the database's newest is exactly that (version, hash), so the
    newest envelope (megabytes at fleet size) is not read back on every change."""

    def __post_init__(self) -> None:
        if self.retention < 1:
            raise ValueError("snapshot retention must keep at least 1 version")

    async def publish(
        self, session: AsyncSession, *, actor: str, reason: str, force: frozenset[str] | None = frozenset()
    ) -> Publication:
        """Store the next version of every group whose content changed (and of the groups in
        ``force``; ``ALL_GROUPS``: every group); the caller holds the config lock and commits."""
        groups = [group_view(g) for g in await group_repo.list_all(session)]
        heads = await snapshot_repo.heads(session)
        now = datetime.now(UTC)
        full = await full_snapshot(session, now=now, ttl=self.ttl, trusted=await trusted_keys(session))
        # The header is per group and per version; the body is cut once per group.
        full.ClearField("created_at")
        full.ClearField("expires_at")
        candidates = []
        for group in groups:
            head = heads.get(group.name)
            header = snapshot_pb2.Snapshot(
                version=(head.version if head is not None else 0) + 1,
                created_at=timestamp(now),
                expires_at=timestamp(now + self.ttl),
                previous_hash=head.sha256 if head is not None else b"",
            )
            cached = self._bodies.get(group.name)
            if head is None:
                candidates.append(_Candidate(group, header, None))
            elif cached is not None and cached[:2] == head.key:
                candidates.append(_Candidate(group, header, cached[2]))
            else:
                row = await snapshot_repo.get(session, head.version, group.name)
                payload = row.payload if row is not None else None
                candidates.append(_Candidate(group, header, None, payload))
        # Every key that still signs: during a rotation, the retiring key beside the new one.
        signers = await self.keyring.signers(session)
        # The newest key statements ride along: a node that missed a rotation (or a site
        # handed this as a pin) follows them from a key it trusts to the one that signed.
        chain = await signing_repo.chain(session, newest=MAX_TRUST_CHAIN)
        cuts = await asyncio.to_thread(_seal_all, full, candidates, force, signers, chain)
        published: dict[str, PublishedSnapshot] = {}
        for cut in cuts:
            item = cut.sealed
            if item is None:
                head = heads[cut.group]
                self._bodies[cut.group] = (*head.key, cut.body_sha256)
                continue
            version = item.snapshot.version
            await snapshot_repo.add(
                session,
                Snapshot(
                    node_group=item.group,
                    version=version,
                    envelope=item.envelope,
                    sha256=item.sha256,
                    previous_hash=item.snapshot.previous_hash,
                    signing_key_id=signers[0].key_id,
                    created_at=now,
                    created_by=actor,
                    reason=reason,
                ),
            )
            # Bounded history, in the same transaction: a rolled-back publish prunes nothing.
            await snapshot_repo.prune(session, newest=version, keep_last=self.retention, group=item.group)
            # Delivered at commit, to every replica LISTENing, this one included.
            await snapshot_repo.announce(session, version, item.group)
            published[item.group] = PublishedSnapshot(
                version, item.sha256, item.envelope, now, item.config, item.group
            )
            # Keyed by (version, hash): if this transaction rolls back, no stored snapshot
            # has them, and the entry is never used.
            self._bodies[item.group] = (version, item.sha256, cut.body_sha256)
        names = {g.name for g in groups}
        newest = {name: head.version for name, head in heads.items() if name in names}
        newest.update({name: p.version for name, p in published.items()})
        return Publication(published, newest)
