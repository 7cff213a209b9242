"""Turn the current database state into new signed, stored, announced snapshots: one
per node group whose content changed.

Runs inside the admin call's transaction, after its change. The config rows are read as
encoded records (``rows.RowCache``: only rows new or changed since the last read are
fetched and encoded) and each group's body is cut from them (``rows.cut``, the rules of
``scope.scope_snapshot``). A group whose body equals its newest stored version's gets no
new version (its nodes hear nothing). Otherwise the new payload is compiled by difference
from the newest one this replica holds compiled (``dataplane.snapshot.compiled``; the node's
full compiler decides every case the difference cannot, and compiles whole when nothing
is held), and the delta from the previous version is stored beside the envelope for the
nodes that run it. If any changed group's candidate does not compile, nothing is signed
and the whole transaction rolls back, the error naming the group. Cutting, comparing,
compiling, hashing and signing run in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import NodeGroup, Snapshot
from controlplane.db.session import database_now
from controlplane.errors import ConfigRejected
from controlplane.keys import MAX_TRUST_CHAIN, Keyring, Signer, sign_all, trusted_keys
from controlplane.limits import DEFAULT_GROUP
from controlplane.repositories import governance as governance_repo
from controlplane.repositories import groups as group_repo
from controlplane.repositories import identities as identity_repo
from controlplane.repositories import signing_keys as signing_repo
from controlplane.repositories import snapshots as snapshot_repo
from controlplane.snapshots import rows
from controlplane.snapshots.build import TRUSTED_KEY_STATE, build_snapshot, timestamp
from controlplane.snapshots.compiler import SnapshotInvalid, compile_now
from controlplane.snapshots.scope import GroupView, describe
from dataplane.config.model import DeploymentMode, RuntimeConfig
from dataplane.snapshot.compiled import Compiled
from dataplane.snapshot.delta import Splice, delta_message, diff
from dataplane.snapshot.layout import (
    GOVERNANCE_PROFILES,
    IDENTITIES,
    TRUSTED_KEYS,
    Layout,
    LayoutError,
    make_layout,
    record,
    scan,
)
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.wallclock import utc_now


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
    delta: bytes | None = field(default=None, repr=False, compare=False)
    """The serialized ``SnapshotDelta`` from the group's previous version, if known."""


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
    version: int
    previous_hash: bytes
    sha256: bytes
    envelope: bytes
    compiled: Compiled
    delta: bytes | None
    """The serialized ``SnapshotDelta`` from the group's previous version (None: no base)."""


@dataclass(frozen=True, slots=True)
class _Candidate:
    """A group, its new header, and what its newest stored snapshot carried."""

    group: GroupView
    header: snapshot_pb2.Snapshot
    base: Compiled | None
    """The group's newest stored snapshot compiled, when this replica holds it: the new one
    is compiled by difference from it."""
    previous_payload: bytes | None = None
    """Else that snapshot's payload (its layout is read off the event loop); None: it has none."""


@dataclass(frozen=True, slots=True)
class _Cut:
    """A group's sealed snapshot, or its unchanged newest (``base``) when its content did not change."""

    group: str
    sealed: _Sealed | None
    base: Compiled | None = None


def _signed(signers: list[Signer], payload: bytes, chain: list[bytes]) -> snapshot_pb2.SignedEnvelope:
    """The envelope: ``payload`` signed by every signer, carrying the trust chain."""
    envelope = sign_all(signers, payload)
    for statement in chain:
        envelope.trust_chain.add().ParseFromString(statement)
    return envelope


def _previous(candidate: _Candidate) -> tuple[Layout | None, Compiled | None]:
    if candidate.base is not None:
        return candidate.base.layout, candidate.base
    if candidate.previous_payload is None:
        return None, None
    try:
        return scan(candidate.previous_payload), None
    except LayoutError:
        return None, None  # stored by an older release: compared as "changed", sent whole


def _seal_all(
    full: rows.FullRows,
    trusted: list[bytes],
    identities: list[identity_repo.IdentityRecord],
    profiles: list[governance_repo.ProfileRecord],
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
        records: dict[int, Sequence[bytes]] = dict(rows.cut(full, candidate.group).records)
        records[TRUSTED_KEYS] = trusted
        records[IDENTITIES] = identity_repo.for_group(identities, candidate.group.tenants)
        records[GOVERNANCE_PROFILES] = governance_repo.for_group(profiles, candidate.group.tenants)
        layout = make_layout(candidate.header, records)
        previous, base = _previous(candidate)
        unforced = not (forced is None or group in forced)
        if previous is not None and unforced and previous.body_equals(layout):
            cuts.append(_Cut(group, None, base))  # the same config: its nodes hear nothing
            continue
        payload = layout.payload()
        digest = hashlib.sha256(payload).digest()
        splices: list[Splice] | None = None
        try:
            if previous is not None:
                splices, changes = diff(previous, layout)
                compiled = (
                    base.advance(layout, changes, payload, digest)
                    if base is not None
                    else Compiled.full(layout, payload)
                )
            else:
                compiled = Compiled.full(layout, payload)
        except SnapshotInvalid as exc:
            where = describe(snapshot_pb2.Snapshot.FromString(payload), exc.path)
            raise ConfigRejected(exc.path, exc.problem, where, group=group) from exc
        checked.append((candidate, layout, payload, digest, splices, compiled))
    for c, layout, payload, digest, splices, compiled in checked:
        envelope = _signed(signers, payload, chain)
        delta = None
        if splices is not None:
            base_key = (c.header.version - 1, bytes(c.header.previous_hash))
            delta = delta_message(base_key, layout, splices, digest, envelope).SerializeToString()
        sealed = _Sealed(
            c.group.name,
            c.header.version,
            bytes(c.header.previous_hash),
            digest,
            envelope.SerializeToString(deterministic=True),
            compiled,
            delta,
        )
        cuts.append(_Cut(c.group.name, sealed))
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


HELD_PER_GROUP = 3
"""Compiled snapshots kept per group (see ``SnapshotPublisher._compiled``)."""


def _compile_stored(payload: bytes) -> Compiled | None:
    """A stored payload compiled with its layout; None when this build cannot (then the
    next change is compiled whole)."""
    try:
        return Compiled.full(scan(payload), payload)
    except (LayoutError, SnapshotInvalid):
        return None


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

    host_clock: Callable[[], datetime] = field(default=utc_now, repr=False, compare=False)
    """This host's clock: only compared with the database's, which dates snapshots."""

    _rows: rows.RowCache = field(default_factory=rows.RowCache, repr=False, compare=False)
    """The config rows as encoded records, re-encoded only when a row changes (per replica)."""
    _compiled: dict[str, dict[tuple[int, bytes], Compiled]] = field(
        default_factory=dict, repr=False, compare=False
    )
    """Per group, by (version, payload hash): the few newest snapshots this replica stored or
    read, compiled. Used only when the database's newest is exactly one of them: the next
    version is then compared, diffed and compiled by difference from it, and the newest
    envelope (megabytes at fleet size) is never read back. Several are kept because a
    version stored in a transaction that rolls back is never the newest."""

    def __post_init__(self) -> None:
        if self.retention < 1:
            raise ValueError("snapshot retention must keep at least 1 version")

    def _hold(self, group: str, compiled: Compiled) -> None:
        held = self._compiled.setdefault(group, {})
        held[(compiled.config.version, compiled.config.payload_sha256)] = compiled
        while len(held) > HELD_PER_GROUP:
            del held[next(iter(held))]

    async def now(self, session: AsyncSession) -> datetime:
        """The time snapshots are dated by: the database's, one clock for every replica. A
        replica's own clock that was behind by more than a snapshot's lifetime (a host booted
        at 1970) signed snapshots every node refused as expired; one far ahead, snapshots
        dated in the future, re-issued by the other replicas at every check."""
        return await database_now(session, self.host_clock, "snapshots")

    async def publish(
        self, session: AsyncSession, *, actor: str, reason: str, force: frozenset[str] | None = frozenset()
    ) -> Publication:
        """Store the next version of every group whose content changed (and of the groups in
        ``force``; ``ALL_GROUPS``: every group); the caller holds the config lock and commits."""
        groups = [group_view(g) for g in await group_repo.list_all(session)]
        heads = await snapshot_repo.heads(session)
        now = await self.now(session)
        # Only rows new or changed since the last read are fetched and encoded; each
        # group's body is cut from these records, and the header is per group and version.
        full = await self._rows.read(session)
        candidates = []
        for group in groups:
            head = heads.get(group.name)
            header = snapshot_pb2.Snapshot(
                version=(head.version if head is not None else 0) + 1,
                created_at=timestamp(now),
                expires_at=timestamp(now + self.ttl),
                previous_hash=head.sha256 if head is not None else b"",
                scope=group.scope,
            )
            held = self._compiled.get(group.name, {})
            if head is None:
                candidates.append(_Candidate(group, header, None))
            elif (base := held.get(head.key)) is not None:
                candidates.append(_Candidate(group, header, base))
            else:
                row = await snapshot_repo.get(session, head.version, group.name)
                payload = row.payload if row is not None else None
                candidates.append(_Candidate(group, header, None, payload))
        trusted = [
            record(
                TRUSTED_KEYS,
                snapshot_pb2.TrustedKey(
                    key_id=kid, ed25519_public_key=pub, state=TRUSTED_KEY_STATE[state]
                ).SerializeToString(deterministic=True),
            )
            for kid, pub, state in await trusted_keys(session)
        ]
        # Every key that still signs: during a rotation, the retiring key beside the new one.
        signers = await self.keyring.signers(session)
        # The newest key statements ride along: a node that missed a rotation (or a site
        # handed this as a pin) follows them from a key it trusts to the one that signed.
        chain = await signing_repo.chain(session, newest=MAX_TRUST_CHAIN)
        identities = await identity_repo.records(session)
        profiles = await governance_repo.records(session)
        cuts = await asyncio.to_thread(
            _seal_all, full, trusted, identities, profiles, candidates, force, signers, chain
        )
        published: dict[str, PublishedSnapshot] = {}
        for cut in cuts:
            item = cut.sealed
            if item is None:
                if cut.base is None:
                    # The unchanged newest was read from the database: compile it once, off
                    # the loop, so the next change is compiled by difference.
                    head = heads[cut.group]
                    row = await snapshot_repo.get(session, head.version, cut.group)
                    compiled = None if row is None else await asyncio.to_thread(_compile_stored, row.payload)
                    if compiled is not None:
                        self._hold(cut.group, compiled)
                continue
            version = item.version
            await snapshot_repo.add(
                session,
                Snapshot(
                    node_group=item.group,
                    version=version,
                    envelope=item.envelope,
                    sha256=item.sha256,
                    previous_hash=item.previous_hash,
                    signing_key_id=signers[0].key_id,
                    created_at=now,
                    created_by=actor,
                    reason=reason,
                    delta=item.delta,
                ),
            )
            # Bounded history, in the same transaction: a rolled-back publish prunes nothing.
            await snapshot_repo.prune(session, newest=version, keep_last=self.retention, group=item.group)
            # Delivered at commit, to every replica LISTENing, this one included.
            await snapshot_repo.announce(session, version, item.group)
            published[item.group] = PublishedSnapshot(
                version, item.sha256, item.envelope, now, item.compiled.config, item.group, item.delta
            )
            # Keyed by (version, hash): if this transaction rolls back, no stored snapshot
            # has them, and the entry is never used.
            self._hold(item.group, item.compiled)
        names = {g.name for g in groups}
        for gone in set(self._compiled) - names:
            del self._compiled[gone]
        newest = {name: head.version for name, head in heads.items() if name in names}
        newest.update({name: p.version for name, p in published.items()})
        return Publication(published, newest)
