"""Per-replica fan-out of each node group's newest snapshot to the sync streams connected here.

Replicas never talk to each other: each one LISTENs on a Postgres channel, and
on a notification (debounced, so a burst of changes becomes one push) reloads
every group's newest envelope from the database and wakes the streams of the groups
whose newest version moved, and only those. A second channel announces revoked nodes:
their streams on this replica end at once (``REVOKED``). A notice sent while the listening
connection was down never arrives: on reconnecting, the nodes revoked meanwhile are looked
up and ended just the same. A listening connection only waits, so one whose peer vanished
without a reset (a partition, a dead database host) would wait forever: it has TCP
keepalives, and after ``PROBE_INTERVAL`` of silence it is asked ``SELECT 1``; one that does
not answer within ``PROBE_TIMEOUT`` is replaced like a lost one.

Push-side coalescing and deltas. A stream sends only the newest version when it is woken
(``ConfigSyncServicer._due``), and gRPC flow control holds a stream's next write until the
node has taken the previous one, so a node mid-transfer skips every version published
meanwhile; with group commit on the write side (``controlplane.services.base``) the number
of pushes per node is bounded by how fast the node takes them, not by the change rate.

That was not enough at fleet size: at 50,000 keys a snapshot is 7.9 MB, so one change was
1.6 GB over 200 streams (measured p50 5.4 s, p99 20 s). Decided: large fleets need deltas,
and they are built. Each stored snapshot keeps the ``SnapshotDelta`` from its group's
previous version (record splices, ``dataplane.snapshot.delta``); this broker holds the
newest ``MAX_DELTA_CHAIN`` of them per group, and a node that runs (or was just sent) a
version the chain starts from gets the deltas instead of the envelope. A delta verifies
exactly as a full snapshot: the node rebuilds the full payload bytes on its last-known-good
and checks the control plane's signatures over those FULL bytes (the delta carries the full
payload's hash and signatures, never a signature over the delta itself); anything that does
not fit is answered with Resync and the newest goes out whole. Nodes too far behind, new
nodes and old nodes (no ``accepts_delta``) get the envelope whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from google.protobuf.message import DecodeError
from psycopg.conninfo import make_conninfo
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.db.session import compare_host_clock, connect_options
from controlplane.limits import DEFAULT_GROUP
from controlplane.repositories import identity as identity_repo
from controlplane.repositories import snapshots as snapshot_repo
from signalbox.api.config.v1 import snapshot_pb2, sync_pb2
from signalbox.wallclock import elapsed, utc_now

log = logging.getLogger(__name__)


MAX_DELTA_CHAIN = 16
"""Deltas held per group (and sent in a row at most): a node further behind gets the newest whole."""


@dataclass(frozen=True, slots=True)
class Latest:
    """A group's newest stored snapshot as sent to nodes."""

    version: int
    sha256: bytes
    envelope: snapshot_pb2.SignedEnvelope
    group: str = DEFAULT_GROUP
    size: int = 0
    """The envelope's serialized size (a chain of deltas larger than half of it is not sent)."""


@dataclass(eq=False, slots=True)
class Subscription:
    """One sync stream's inbox: ``None`` wakes it to look at ``broker.latest_for(group)``;
    an envelope is a test-injected one to send as is; ``CLOSED`` ends the stream;
    ``REVOKED`` ends it because the node's certificates were revoked."""

    queue: asyncio.Queue[snapshot_pb2.SignedEnvelope | sync_pb2.SnapshotDelta | object | None] = field(
        default_factory=asyncio.Queue
    )
    node_id: str = ""
    group: str = DEFAULT_GROUP
    woken: bool = False
    """A wake (``None``) is in the inbox and not taken yet: another would add nothing."""

    def wake(self) -> None:
        """Have the stream look at its group's newest snapshot. At most one wake waits in the
        inbox: a stream held by a node that does not read (flow control) while its group
        changes or it asks Resync in a loop gathered one item per change or message."""
        if not self.woken:
            self.woken = True
            self.queue.put_nowait(None)

    def taken(self, item: object) -> object:
        """``item`` as taken from the inbox (a wake taken lets the next one in)."""
        if item is None:
            self.woken = False
        return item


CLOSED = object()
REVOKED = object()
RELOAD_RETRY_FIRST = 0.2
RELOAD_RETRY_CAP = 5.0
"""Seconds between attempts to reload a change the database did not let be read (doubling)."""
PROBE_INTERVAL = 30.0
"""Seconds the listening connection may stay silent before it is asked ``SELECT 1``."""
PROBE_TIMEOUT = 10.0
"""Seconds that probe may take before the connection is taken for dead and replaced."""
LOST_NOTICE_MARGIN = timedelta(minutes=10)
"""How long before its listening connection was seen lost a replica looks back for
revocations it may have missed: the connection may have died unnoticed a while before."""


def listen_conninfo(url: str) -> str:
    """What the listening connection to ``url`` (libpq form) is made with: the connect timeout
    and TCP keepalives of every database connection (``controlplane.db.session``)."""
    return make_conninfo(url, **connect_options(url))


class SnapshotBroker:
    """Holds each group's newest envelope and wakes that group's subscribers when it changes."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        listen_url: str,
        *,
        debounce: float = 0.05,
        reconnect_backoff: float = 1.0,
        probe_interval: float = PROBE_INTERVAL,
        probe_timeout: float = PROBE_TIMEOUT,
    ) -> None:
        self._sessions = sessions
        self._listen_url = listen_url
        self.debounce = debounce
        """Seconds a burst of notifications is gathered before one reload and push."""
        self._reconnect_backoff = reconnect_backoff
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout
        self._subscribers: set[Subscription] = set()
        self._latest: dict[str, Latest] = {}
        self._listener: asyncio.Task[None] | None = None
        self._pending: asyncio.Task[None] | None = None
        self._dirty = False
        self._offered: dict[str, tuple[int, bytes, bytes, bytes | None]] = {}
        self._deltas: dict[str, dict[int, tuple[sync_pb2.SnapshotDelta, int]]] = {}
        """Per group, by version: the delta from the version before (the newest few)."""
        self._listening = asyncio.Event()
        self._closed = False
        self.on_update: list[Callable[[Latest], None]] = []
        self.on_revoked: list[Callable[[str], None]] = []
        """Called with a node id whose certificates were revoked (on every replica): other
        node-port streams of that node (evidence shipping) end too."""
        self.on_database: list[Callable[[bool], Awaitable[None]]] = []
        """Awaited with False when the listening connection is lost (the database is
        unreachable: restarted, down, cut off) and with True each time LISTEN is active
        again (and at the first start): the control plane's health follows it."""
        self.host_clock: Callable[[], datetime] = utc_now
        """This host's wall clock: only compared with the database's, to log a gap."""

    def latest_for(self, group: str) -> Latest | None:
        """``group``'s newest snapshot as last loaded (None: it has none)."""
        return self._latest.get(group)

    def delta_chain(
        self, group: str, base: tuple[int, bytes], target: int
    ) -> list[sync_pb2.SnapshotDelta] | None:
        """The deltas that lead from ``base`` (version, payload hash) to version ``target``
        of ``group``, oldest first; None when one of them is not held here."""
        held = self._deltas.get(group, {})
        latest = self._latest.get(group)
        chain: list[sync_pb2.SnapshotDelta] = []
        size = 0
        version = target
        while version > base[0]:
            delta, delta_size = held.get(version, (None, 0))
            if delta is None or delta.base_version != version - 1 or len(chain) >= MAX_DELTA_CHAIN:
                return None
            chain.append(delta)
            size += delta_size
            version -= 1
        if not chain or version != base[0] or chain[-1].base_sha256 != base[1]:
            return None
        if latest is not None and latest.version == target and size > latest.size // 2:
            return None  # most of the config changed: the envelope whole is as cheap
        chain.reverse()
        return chain

    async def _hold_delta(self, group: str, version: int, raw: bytes | None, envelope_size: int) -> None:
        held = self._deltas.setdefault(group, {})
        if raw is None or len(raw) > envelope_size // 2:
            # None: not known; larger than half the envelope: never sent (``delta_chain``), so
            # not held either (a bulk change's delta is megabytes). Either way a chain through
            # this version is broken, and the newest goes whole.
            held.pop(version, None)
            return
        try:
            # Off the loop: a bulk change's delta is megabytes.
            delta = await asyncio.to_thread(sync_pb2.SnapshotDelta.FromString, raw)
        except DecodeError:
            log.error("stored delta of %s v%d does not decode; nodes get that version whole", group, version)
            return
        held[version] = (delta, len(raw))
        for old in sorted(held)[:-MAX_DELTA_CHAIN]:
            del held[old]

    async def start(self) -> None:
        """Load the newest snapshot and start listening; returns once LISTEN is active."""
        await self.refresh()
        self._listener = asyncio.create_task(self._listen(), name="snapshot-listener")
        await self._listening.wait()

    async def close(self) -> None:
        """Stop listening and end every subscribed stream."""
        self._closed = True
        for task in (self._listener, self._pending):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for sub in list(self._subscribers):
            sub.queue.put_nowait(CLOSED)

    def subscribe(self, node_id: str, group: str = DEFAULT_GROUP) -> Subscription:
        sub = Subscription(node_id=node_id, group=group)
        if self._closed:
            sub.queue.put_nowait(CLOSED)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    def inject(
        self, envelope: snapshot_pb2.SignedEnvelope | sync_pb2.SnapshotDelta, node_id: str | None = None
    ) -> int:
        """Test hook: send ``envelope`` as is to the streams of ``node_id`` (all when None).

        Returns how many streams got it. Lets tests feed nodes tampered, replayed or
        foreign-signed envelopes through the real sync path.
        """
        count = 0
        for sub in self._subscribers:
            if node_id is None or sub.node_id == node_id:
                sub.queue.put_nowait(envelope)
                count += 1
        return count

    def revoked(self, node_id: str) -> int:
        """End the streams of ``node_id`` on this replica; returns how many."""
        count = 0
        for sub in self._subscribers:
            if sub.node_id == node_id:
                sub.queue.put_nowait(REVOKED)
                count += 1
        for callback in self.on_revoked:
            callback(node_id)
        return count

    def offer(
        self, group: str, version: int, sha256: bytes, envelope: bytes, delta: bytes | None = None
    ) -> None:
        """A snapshot this replica just committed: the reload that follows (debounced, as
        for any change) takes its envelope (and delta) from here rather than reading it back."""
        self._offered[group] = (version, bytes(sha256), envelope, delta)
        self.kick()

    def kick(self) -> None:
        """Something changed: reload after the debounce interval (once per burst).

        A change notified while a reload is already reading the database may be newer
        than what that read sees, so it marks another reload due rather than being
        folded into the running one (which would lose it until the next change).
        """
        self._dirty = True
        if self._pending is None or self._pending.done():
            self._pending = asyncio.create_task(self._debounced_refresh(), name="snapshot-refresh")

    async def _debounced_refresh(self) -> None:
        delay = self.debounce
        while self._dirty:
            self._dirty = False
            await asyncio.sleep(delay)
            try:
                await self.refresh()
            except Exception as exc:
                # The database refused the reload (restarted, out of connections, a pooled
                # connection gone) while the listening connection lives on: nothing would
                # reload until the next change, and this replica's nodes would run the old
                # config meanwhile. Try again, backing off, until it is read.
                self._dirty = True
                delay = min(max(delay * 2, RELOAD_RETRY_FIRST), RELOAD_RETRY_CAP)
                log.warning("could not reload the newest snapshots (%s); retrying in %.1fs", exc, delay)
            else:
                delay = self.debounce

    async def refresh(self) -> None:
        """Reload every group's newest envelope; wake the subscribers of each group whose
        newest is newer than what we hold."""
        async with self._sessions() as session:
            # Every connecting node asks: load an envelope (megabytes) only when it is new,
            # and not at all when this replica committed it (``offer``).
            heads = await snapshot_repo.heads(session)
            moved: set[str] = set()
            for group, head in heads.items():
                held = self._latest.get(group)
                if held is not None and head.version <= held.version:
                    continue
                offered = self._offered.pop(group, None)
                if offered is not None and offered[:2] == head.key:
                    raw = offered[2]
                    if held is not None and held.version == head.version - 1:
                        await self._hold_delta(group, head.version, offered[3], len(raw))
                    else:
                        await self._load_deltas(session, group, held, head.version, len(raw))
                else:
                    row = await snapshot_repo.get(session, head.version, group)
                    if row is None:
                        continue  # pruned between the two reads: a newer one is on its way
                    raw = bytes(row.envelope)
                    await self._load_deltas(session, group, held, head.version, len(raw))
                envelope = await asyncio.to_thread(snapshot_pb2.SignedEnvelope.FromString, raw)
                newer = self._latest.get(group)
                if newer is not None and newer.version >= head.version:
                    continue  # a refresh running beside this one got here first
                self._latest[group] = latest = Latest(head.version, head.sha256, envelope, group, len(raw))
                moved.add(group)
                for callback in self.on_update:
                    callback(latest)
        for sub in self._subscribers:
            if sub.group in moved:
                sub.wake()

    async def _load_deltas(
        self, session: AsyncSession, group: str, held: Latest | None, newest: int, envelope_size: int
    ) -> None:
        """The deltas of the versions after ``held`` up to ``newest`` (the newest few);
        ``envelope_size``: the newest envelope's, which the older ones are close to."""
        since = max(held.version if held is not None else 0, newest - MAX_DELTA_CHAIN)
        for version, raw in await snapshot_repo.deltas(session, group, since, newest):
            await self._hold_delta(group, version, raw, envelope_size)

    async def _missed_since(self, conn: psycopg.AsyncConnection[Any], lost: float) -> datetime:
        """Since when revocations may have been missed, by the database's clock (``revoked_at``
        is dated by it): the outage, timed on ``elapsed`` from ``lost`` (when it was noticed),
        and the margin before it. A loss dated by this host's clock looked back from the wrong
        instant: a replica 10 minutes ahead of the database looked for revocations after
        they were made, found none, and kept a revoked node's streams open."""
        cursor = await conn.execute("SELECT now()")
        row = await cursor.fetchone()
        assert row is not None
        now: datetime = row[0]
        compare_host_clock(now, self.host_clock, "revocations missed while not listening")
        return now - timedelta(seconds=max(0.0, elapsed() - lost)) - LOST_NOTICE_MARGIN

    async def _listen(self) -> None:
        lost: float | None = None
        """When the loss of the listening connection was noticed, on ``elapsed`` (None: it
        was not lost, or the loss is caught up)."""
        while True:
            try:
                conninfo = listen_conninfo(self._listen_url)
                async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                    await snapshot_repo.listen(conn)
                    await identity_repo.listen(conn)
                    if self._listening.is_set():
                        # Reconnected: notifications may have been missed meanwhile.
                        self.kick()
                    if lost is not None:
                        # A revocation notified meanwhile never arrives: its node's streams
                        # here would stay open (and be sent every new snapshot). Whoever was
                        # revoked since shortly before the loss is ended now (their reconnects
                        # are refused; a node enrolled again since just reconnects).
                        for node_id in await identity_repo.revoked_since(
                            conn, await self._missed_since(conn, lost)
                        ):
                            self.revoked(node_id)
                        lost = None
                    self._listening.set()
                    await self._database_reachable(True)
                    await self._receive(conn)
            except psycopg.OperationalError as exc:
                if lost is None:
                    lost = elapsed()
                    await self._database_reachable(False)
                self._listening.set()
                log.warning("snapshot listener lost its connection (%s); reconnecting", exc)
                await asyncio.sleep(self._reconnect_backoff)

    async def _receive(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Act on the notifications ``conn`` receives until it is found dead (raises
        ``OperationalError``). A connection whose peer vanished without a reset (a partition,
        a dead database host) is never closed by waiting on it: it is asked ``SELECT 1``
        after each ``probe_interval`` of silence, and one that does not answer within
        ``probe_timeout`` is replaced (and what was notified meanwhile reloaded, ``_listen``)."""
        while True:
            heard = False
            async for notify in conn.notifies(timeout=self._probe_interval):
                heard = True
                if notify.channel == identity_repo.REVOKE_CHANNEL:
                    self.revoked(notify.payload)
                else:
                    self.kick()
            if not heard and not await self._answers(conn):
                raise psycopg.OperationalError(
                    f"the listening connection did not answer a probe within {self._probe_timeout:g} s"
                )

    async def _answers(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        """Whether ``conn`` answers ``SELECT 1`` within ``probe_timeout``; closed when not."""
        probe = asyncio.create_task(conn.execute("SELECT 1"), name="snapshot-listener-probe")
        answered = False
        try:
            done, _ = await asyncio.wait({probe}, timeout=self._probe_timeout)
            answered = bool(done)
        finally:
            if not answered:  # no answer in time, or the listener is being stopped
                # Closed before the probe is cancelled: cancelling a query in flight first
                # asks the server to cancel it and waits seconds for one that does not answer.
                await conn.close()
                probe.cancel()
                with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
                    await probe
        if answered:
            probe.result()  # a connection that failed outright raises OperationalError here
        return answered

    async def _database_reachable(self, reachable: bool) -> None:
        for callback in self.on_database:
            try:
                await callback(reachable)
            except Exception:
                # Listening goes on (and keeps snapshots and revocations flowing) whatever it does.
                log.exception("a callback on the database's reachability failed")
