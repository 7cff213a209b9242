"""Ingest: the one path by which evidence enters the store (shipped batches, later imports).

A batch is records of one chain, as the JSONL lines the node wrote, in seq order, plus
checkpoint notes. Per batch, under the chain's row lock (so one writer per chain across
replicas, and (chain, seq) stays unique although the primary key must also hold ``ts``):

- every record is checked on its own (``controlplane.evidence.records``): bounded, JSON, of
  this chain and node, and its hash recomputed over the line's bytes;
- its ``prev_hash`` must be the hash of the record before it (the stored head for the first
  new one);
- a seq already stored with the same hash is a duplicate (at-least-once delivery: counted,
  not stored again); with another hash it is tampering: an alarm row, the chain marked
  ``tampered``, the batch refused from that record on;
- a seq beyond the next one is a gap: an alarm, nothing from it on is stored (the node
  resends from the ACKed head);
- the records that continue the chain are written with COPY, and their costs are added to
  the budgets' spend (``controlplane.evidence.spend``: each record counts once, as it is
  stored once); the chain's head and Merkle tree move in the same transaction, with its
  compact range at every ``FRONTIER_EVERY``-th record (``evidence_frontiers``, what a later
  checkpoint of an earlier size is checked from); the ACK (highest gap-free seq stored) is
  answered only after the commit;
- each checkpoint note (``controlplane.evidence.checkpoints``) must be signed by the node
  (``verify_checkpoint_signature``, given by the application, never defaulted) and, once records 1..size are stored, its root must be
  the Merkle root of their hashes; a mismatch is a tamper alarm naming the checkpoint. A
  new one that matches is stored with the control plane's witness cosignature (its active
  signing key, the time of its own clock: ``dataplane.evidence.cosignature``) and the
  compact range of records 1..size, which exports prove later records from.

Records before a refused one are stored and acknowledged: they verified on their own.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime
from typing import cast

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.db.models import (
    CHAIN_ID_CHARS,
    EvidenceAlarm,
    EvidenceChain,
    EvidenceFrontier,
    NodeCertificate,
)
from controlplane.db.session import DatabaseClock, database_now
from controlplane.errors import PermissionDenied, shown
from controlplane.evidence import pools
from controlplane.evidence.checkpoints import (
    Checkpoint,
    CheckpointVerifier,
    Witness,
    parse_checkpoint,
    store_checkpoint,
)
from controlplane.evidence.errors import ChainBroken, EvidenceRefused, Gap, ParsingLost, Tampered
from controlplane.evidence.handover import Handover, ParseOverdue
from controlplane.evidence.partitions import PartitionGone, Partitions
from controlplane.evidence.records import COLUMNS, COPY_HEADER, COPY_TRAILER, Parsed, parse_lines, where
from controlplane.evidence.spend import add_spend, tenants_seen
from controlplane.evidence.tree import FRONTIER_EVERY, StoredTree
from controlplane.keys import Keyring
from controlplane.limits import NODE_ID_CHARS
from dataplane.evidence import cosignature
from dataplane.evidence.records import GENESIS_HASH
from signalbox.wallclock import utc_now

log = logging.getLogger(__name__)

MAX_BATCH_RECORDS = 10_000
POOL_MIN_LINES = 256
"""Smaller batches are parsed on the event loop: a round trip to a worker costs more."""
PARSE_DEADLINE = 60.0
"""Seconds a batch may take in a parsing process (a large one takes well under one): past
it the process is taken for stuck and stopped, and the batch refused UNAVAILABLE."""
CLOSE_GRACE = 5.0
"""Seconds a parsing process has to end its batch when ingest closes, before it is killed."""
PARSE_ATTEMPTS = 2
"""Pools a batch is tried in when its parsing process dies: a fresh one after a death that
was not the batch's doing; a batch that kills a second one too is refused (UNAVAILABLE)."""
MAX_CHECKPOINTS = 16
DEFAULT_LOCK_TIMEOUT = 10.0
"""Seconds a batch's transaction waits for a lock before it gives up (UNAVAILABLE, resent):
a session that holds a chain's row (an operator's transaction left open, a stuck replica)
would otherwise hold the batch, its stream and a pooled connection until the node's ACK
timeout, each resend taking another connection, until the control plane has none left."""
PARTITION_ATTEMPTS = 3
"""Transactions a batch may take when retention keeps dropping a past month it needs."""
_CHAIN_COLUMNS = (
    EvidenceChain.chain_id,
    EvidenceChain.head_seq,
    EvidenceChain.head_hash,
    EvidenceChain.tree,
    EvidenceChain.state,
    EvidenceChain.alarm,
)
_CHAINS = cast(sa.Table, EvidenceChain.__table__)
_FRONTIERS = cast(sa.Table, EvidenceFrontier.__table__)
"""Written with Core, not the ORM's bulk statements: their per-statement work was a
measurable share of a batch's Python time (py-spy)."""
_ChainRow = sa.Row[str, int, bytes, bytes, str, str, bool | None]

CHAIN_ID_RE = re.compile(
    r"(?P<node>[^\x00-\x1f\x7f]{1,NODE})/(?P<worker>[1-5]?[0-9]|6[0-3])".replace("NODE", str(NODE_ID_CHARS))
)
"""A chain id as a node writes it: its worker 0..63 (``dataplane.workers.MAX_WORKERS``), no
leading zeros, as quota holders are. Any 1..9 digits let one certified node add chain rows
without bound (an empty batch makes its chain's row)."""

OK, GAP, BROKEN, TAMPERED = "ok", Gap.state, ChainBroken.state, Tampered.state


@dataclass(frozen=True, slots=True)
class Batch:
    """What a node ships at once: records of one chain in seq order and checkpoint notes."""

    chain_id: str
    lines: Sequence[bytes]
    """The JSONL lines exactly as written (a trailing newline is allowed)."""
    checkpoints: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class Ack:
    """The answer to a batch, sent only after its transaction committed."""

    chain_id: str
    head_seq: int
    """Highest seq stored with every seq before it."""
    stored: int = 0
    duplicates: int = 0
    checkpoints: int = 0
    refused: EvidenceRefused | None = None
    """Why the batch was refused from some record (or checkpoint) on; None: all of it taken."""


@dataclass(slots=True)
class _Walk:
    """The chain as the batch extends it."""

    head_seq: int
    head_hash: bytes
    tree: StoredTree
    new: list[int] = field(default_factory=list)
    """Indexes of the parsed records that continue the chain."""
    duplicates: int = 0
    roots: dict[int, bytes] = field(default_factory=dict)
    frontiers: dict[int, bytes] = field(default_factory=dict)
    """The compact ranges (``StoredTree.to_bytes``) of the sizes in ``roots``."""
    marks: dict[int, bytes] = field(default_factory=dict)
    """The compact ranges at the new seqs that are multiples of ``FRONTIER_EVERY``."""


class EvidenceIngest:
    """Verifies, commits and acknowledges batches; one per control plane."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        verify_checkpoint_signature: CheckpointVerifier,
        *,
        workers: int = 0,
        partitions: Partitions | None = None,
        keyring: Keyring | None = None,
        host_clock: Callable[[], datetime] = utc_now,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        parse_deadline: float = PARSE_DEADLINE,
    ) -> None:
        """``workers``: processes that parse and hash large batches (0: on the event loop);
        ``partitions``: shared with retention, which drops them (one of its own by default);
        ``keyring``: whose active key cosigns the checkpoints stored (None: stored as the
        node signed them, as a control plane before witnessing did); ``host_clock``: this
        host's, only compared with the database's, which dates the cosignatures and the
        batches' receipt; ``lock_timeout``: seconds a batch waits for its chain's row lock
        before it is refused; ``parse_deadline``: seconds a batch may take in a parsing
        process before that process is taken for stuck (``PARSE_DEADLINE``)."""
        self._keyring = keyring
        self._host_clock = host_clock
        self._received_clock = DatabaseClock(sessions, host_clock, "evidence receipt times")
        """When a batch arrived, by the database's clock: a record dated more than a day after
        it is stored at it (``records.MAX_AHEAD_S``). By this host's clock, a replica days
        behind stored every record at its own wrong date: partitioned, found by time and
        dropped by retention days early (ahead, records dated far ahead kept their dates)."""
        self._sessions = sessions
        self._verify_signature = verify_checkpoint_signature
        self._workers = workers
        self._parse_deadline = parse_deadline
        self._lock_timeout = f"{max(1, round(lock_timeout * 1000))}ms"
        self._pool: ProcessPoolExecutor | None = None
        self._handover = Handover(workers)
        self.partitions = (
            partitions if partitions is not None else Partitions(sessions, lock_timeout=lock_timeout)
        )

    async def ingest(self, node_id: str, batch: Batch, public_key: bytes = b"", serial: str = "") -> Ack:
        """Take ``batch`` from the authenticated node ``node_id``; the ACK after commit.
        ``serial``: the certificate the node connected with, which must still be unrevoked
        when the batch commits (checked in its transaction: ``PermissionDenied`` otherwise)."""
        chain_id = batch.chain_id
        match = CHAIN_ID_RE.fullmatch(chain_id) if len(chain_id) <= CHAIN_ID_CHARS else None
        if match is None:
            raise EvidenceRefused(f"chain_id: must be <node id>/<worker number>, not {shown(chain_id)}")
        if match.group("node") != node_id:
            raise PermissionDenied(f"chain {shown(chain_id)} is not a chain of node {shown(node_id)}")
        if len(batch.lines) > MAX_BATCH_RECORDS:
            raise EvidenceRefused(f"records: {len(batch.lines)} in one batch, at most {MAX_BATCH_RECORDS}")
        if len(batch.checkpoints) > MAX_CHECKPOINTS:
            raise EvidenceRefused(
                f"checkpoints: {len(batch.checkpoints)} in one batch, at most {MAX_CHECKPOINTS}"
            )
        checkpoints = [parse_checkpoint(chain_id, i, n) for i, n in enumerate(batch.checkpoints, start=1)]
        for checkpoint in checkpoints:
            try:
                self._verify_signature(checkpoint.note, node_id, public_key)
            except ValueError as exc:
                raise EvidenceRefused(
                    f"chain {shown(chain_id)}: {checkpoint.name}: signature: {exc}"
                ) from exc

        received = (await self._received_clock.now()).timestamp()
        parsed = await self._parse(chain_id, node_id, batch.lines, received)
        times = parsed.times()
        for _ in range(PARTITION_ATTEMPTS - 1):
            await self.partitions.ensure(times)
            try:
                return await self._commit(node_id, chain_id, parsed, checkpoints, times, serial)
            except PartitionGone:
                continue  # retention dropped a past month's partition meanwhile: make it again
        # Never refused for it: at worst a record of a month retention keeps dropping lands in
        # the DEFAULT partition (kept, queried, exported like any other).
        await self.partitions.ensure(times)
        return await self._commit(node_id, chain_id, parsed, checkpoints, set(), serial)

    async def _commit(
        self,
        node_id: str,
        chain_id: str,
        parsed: Parsed,
        checkpoints: list[Checkpoint],
        times: set[datetime],
        serial: str,
    ) -> Ack:
        """The batch's one transaction: the chain walked, records copied, checkpoints stored
        (``times``: the records' months whose partitions must be held, ``Partitions.hold``)."""
        async with self._sessions() as session, session.begin():
            await session.execute(
                sa.text("SELECT set_config('lock_timeout', :t, true)"), {"t": self._lock_timeout}
            )
            await self.partitions.hold(session, times)
            chain = await self._lock_chain(session, chain_id, node_id, serial)
            if serial and not chain.certified:
                raise PermissionDenied(f"node {node_id}: certificate revoked")  # as the stream says it
            walk = _Walk(chain.head_seq, chain.head_hash, StoredTree.from_bytes(chain.tree, chain.head_seq))
            wanted = {c.size for c in checkpoints}
            seqs = parsed.seqs
            # A batch of new records (the common case) is told by its lowest seq, in C.
            resent = (
                [seq for seq in seqs if seq <= chain.head_seq]
                if min(seqs, default=0) <= chain.head_seq
                else []
            )
            stored = await self._stored_hashes(session, chain_id, resent)
            pruned_upto = 0
            if len(stored) < len(resent):  # some may have been pruned by retention
                pruned_upto = await self._pruned(session, chain_id, stored)
            refused = self._walk(chain_id, parsed, stored, walk, wanted, pruned_upto) or parsed.refused
            if walk.head_seq and walk.head_seq in wanted and walk.head_seq not in walk.roots:
                # A checkpoint of records held before this batch (one that was signed after
                # they were sent): the chain's tree has its root, no need to read them back.
                walk.roots[walk.head_seq] = walk.tree.root()
                walk.frontiers[walk.head_seq] = walk.tree.to_bytes()
            if walk.new:
                await self._copy(session, parsed.rows_of(walk.new))
                if walk.marks:
                    await session.execute(
                        pg_insert(_FRONTIERS)
                        .values(
                            [
                                {"chain_id": chain_id, "tree_size": n, "frontier": f}
                                for n, f in walk.marks.items()
                            ]
                        )
                        .on_conflict_do_nothing()
                    )
                seen = await tenants_seen(session, serial) if parsed.spends else None
                await add_spend(session, parsed.spends, walk.new, seen, chain_id=chain_id)
            state = chain.state
            if refused is not None:
                state = await self._alarm(session, chain, refused, parsed, walk)
            elif state in (GAP, BROKEN):
                state = OK  # the node resent what was missing
            taken = 0
            if refused is None:
                witness = await self._witness(session) if checkpoints else None
                for checkpoint in checkpoints:
                    outcome = await store_checkpoint(
                        session, chain_id, walk.head_seq, walk.roots, checkpoint, witness, walk.frontiers
                    )
                    if isinstance(outcome, EvidenceRefused):
                        refused = outcome
                        if isinstance(outcome, Tampered):
                            state = TAMPERED
                        break
                    taken += outcome
            if chain.state == TAMPERED:
                state = TAMPERED  # stays until someone has looked; ingest never clears it
            await session.execute(
                sa.update(_CHAINS)
                .where(_CHAINS.c.chain_id == chain_id)
                .values(
                    head_seq=walk.head_seq,
                    head_hash=walk.head_hash,
                    tree=walk.tree.to_bytes(),
                    last_received_at=sa.func.now(),
                    state=state,
                    alarm=str(refused)[:2000] if refused is not None and state != OK else chain.alarm,
                )
            )
        return Ack(chain_id, walk.head_seq, len(walk.new), walk.duplicates, taken, refused)

    async def _witness(self, session: AsyncSession) -> Witness | None:
        """The cosigner of this transaction's checkpoints: the active key, dated now by the
        database's clock. That is the clock revocations are dated by (``revoked_at``), which
        ``evidence verify`` compares the cosignature's time with: by a replica's own clock
        ahead of it, a checkpoint witnessed before a revocation read as one seen after it,
        and the pack failed to verify (behind it, the other way round)."""
        if self._keyring is None:
            return None
        signers = await self._keyring.signers(session)
        if not signers:
            return None
        now = int((await database_now(session, self._host_clock, "witness cosignatures")).timestamp())
        active = signers[0]
        return lambda note: cosignature.cosign(note.encode(), active.key_id, active.private_key, now).decode()

    async def _parse(self, chain_id: str, node_id: str, lines: Sequence[bytes], received: float) -> Parsed:
        """Parsing and hashing is most of ingest's CPU: a
        large batch goes to a worker process, so batches of several chains verify at once."""
        if self._workers <= 0 or len(lines) < POOL_MIN_LINES:
            return parse_lines(chain_id, node_id, lines, received)
        for attempt in range(1, PARSE_ATTEMPTS + 1):
            pool = self._started_pool()
            try:
                return await self._handover.parse(
                    pool, chain_id, node_id, lines, received, deadline=self._parse_deadline
                )
            except ParseOverdue:
                # Stuck, not dead (stopped, thrashing, or looping on this batch): every other
                # batch would wait behind it for good. Its processes go, and so does the batch.
                self._stop(pool)
                log.warning(
                    "evidence ingest: the batch of chain %s was not parsed within %g s; its "
                    "parsing process was stopped and new ones started",
                    shown(chain_id),
                    self._parse_deadline,
                )
                raise ParsingLost(
                    f"chain {shown(chain_id)}: this batch was not parsed within "
                    f"{self._parse_deadline:g} s; resend it"
                ) from None
            except BrokenProcessPool:
                # A parsing process died (the OOM killer, a signal, a crash): the pool takes
                # no more work, so every large batch after it would fail until a restart.
                self._replace(pool)
                log.warning(
                    "evidence ingest: a parsing process died with the batch of chain %s in the "
                    "pool (attempt %d of %d); parsing processes started again",
                    shown(chain_id),
                    attempt,
                    PARSE_ATTEMPTS,
                )
        # Twice on this batch: maybe the batch itself. Resent later, others meanwhile go on.
        raise ParsingLost(
            f"chain {shown(chain_id)}: the process parsing this batch died {PARSE_ATTEMPTS} times; resend it"
        )

    def _started_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = self._new_pool()
        return self._pool

    def _new_pool(self) -> ProcessPoolExecutor:
        return pools.new_pool(self._workers)

    def _stop(self, pool: ProcessPoolExecutor) -> None:
        """Kill ``pool``'s processes (a stuck one does not end on request) and let go of it."""
        pools.kill(pool)
        self._replace(pool)

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        """Let go of ``broken``: the next batch starts new processes. The batches that were
        in it at once all fail with it; only the first to get here replaces it."""
        if self._pool is broken:
            self._pool = None
            broken.shutdown(wait=False, cancel_futures=True)

    async def warm(self) -> None:
        """Start the parsing processes now and have each import what parsing needs, rather
        than on the first large batch (a spawn costs a second or two of CPU): what a
        long-running control plane's pool already is, e.g. before a benchmark's clock starts."""
        if self._workers <= 0:
            return
        loop, pool = asyncio.get_running_loop(), self._started_pool()
        await asyncio.gather(
            *(
                loop.run_in_executor(pool, parse_lines, "warm/0", "warm", [], 0.0)
                for _ in range(self._workers)
            )
        )

    def close(self, grace: float = CLOSE_GRACE) -> None:
        """Stop the worker processes (idempotent), each given ``grace`` seconds to end its
        batch. One still running after that is killed: a stuck process (stopped, thrashing,
        looping) never reads the pool's request to end, and waiting for it held the control
        plane's whole stop for good. Blocks: run it off the event loop."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pools.stop(pool, grace)
        self._handover.close()

    @staticmethod
    def _walk(
        chain_id: str,
        parsed: Parsed,
        stored: dict[int, bytes],
        walk: _Walk,
        wanted: set[int],
        pruned_upto: int = 0,
    ) -> EvidenceRefused | None:
        """``pruned_upto``: the chain's records up to this seq were pruned by retention (the
        last one's hash is in ``stored``): one resent is a duplicate, not a tamper alarm."""
        stored_head = walk.head_seq
        hashes, prevs = parsed.hashes, parsed.prev_hashes
        genesis = bytes.fromhex(GENESIS_HASH)
        tree, new = walk.tree, walk.new
        pending: list[bytes] = []
        """The record hashes to append to the tree: at once (``extend``), not one by one."""
        head_seq, head_hash = walk.head_seq, walk.head_hash
        refused: EvidenceRefused | None = None
        for i, seq in enumerate(parsed.seqs):
            digest = hashes[i]
            if seq <= stored_head:
                known = stored.get(seq)
                if known == digest or (known is None and seq < pruned_upto):
                    walk.duplicates += 1
                    continue
                refused = Tampered(
                    f"{where(chain_id, i + 1, seq)}: stored with hash {known.hex() if known else '?'}, "
                    f"arrived with {digest.hex()}",
                    seq=seq,
                )
                break
            if seq != head_seq + 1:
                at = where(chain_id, i + 1, seq)
                if seq > head_seq + 1:
                    refused = Gap(f"{at}: gap, expected seq {head_seq + 1} next (resend from it)", seq=seq)
                else:
                    refused = ChainBroken(f"{at}: out of order, seq {head_seq} came before it", seq=seq)
                break
            if prevs[i] != (head_hash if head_seq else genesis):
                refused = ChainBroken(
                    f"{where(chain_id, i + 1, seq)}: prev_hash does not link to seq {head_seq}", seq=seq
                )
                break
            new.append(i)
            head_seq, head_hash = seq, digest
            pending.append(digest)
            if seq in wanted or not seq % FRONTIER_EVERY:
                tree.extend(pending)
                pending.clear()
                if seq in wanted:
                    walk.roots[seq] = tree.root()
                    walk.frontiers[seq] = tree.to_bytes()
                if not seq % FRONTIER_EVERY:
                    walk.marks[seq] = tree.to_bytes()
        tree.extend(pending)
        walk.head_seq, walk.head_hash = head_seq, head_hash
        return refused

    async def _lock_chain(self, session: AsyncSession, chain_id: str, node_id: str, serial: str) -> _ChainRow:
        """The chain's row, locked for this transaction (made first for a new chain), and
        whether certificate ``serial`` is issued and unrevoked (``certified``). One round trip
        for a known chain (every batch but a chain's first)."""
        certified = (
            sa.select(NodeCertificate.revoked_at.is_(None))
            .where(NodeCertificate.serial == serial)
            .scalar_subquery()
        )
        locked = (
            sa.select(*_CHAIN_COLUMNS, certified.label("certified"))
            .where(EvidenceChain.chain_id == chain_id)
            .with_for_update(of=EvidenceChain)
        )
        row = (await session.execute(locked)).first()
        if row is None:
            await session.execute(
                pg_insert(EvidenceChain)
                .values(
                    chain_id=chain_id,
                    node_id=node_id,
                    head_seq=0,
                    head_hash=b"",
                    tree=b"",
                    state=OK,
                    alarm="",
                )
                .on_conflict_do_nothing(index_elements=["chain_id"])
            )
            row = (await session.execute(locked)).one()
        return row

    @staticmethod
    async def _pruned(session: AsyncSession, chain_id: str, stored: dict[int, bytes]) -> int:
        """The last seq retention pruned of the chain (0: none), its hash added to ``stored``."""
        row = (
            await session.execute(
                sa.text(
                    "SELECT last_seq, last_hash FROM evidence_pruned_ranges WHERE chain_id = :c "
                    "ORDER BY last_seq DESC LIMIT 1"
                ),
                {"c": chain_id},
            )
        ).first()
        if row is None:
            return 0
        stored.setdefault(int(row[0]), bytes(row[1]))
        return int(row[0])

    @staticmethod
    async def _stored_hashes(session: AsyncSession, chain_id: str, seqs: list[int]) -> dict[int, bytes]:
        if not seqs:
            return {}
        rows = await session.execute(
            sa.text("SELECT seq, hash FROM evidence_records WHERE chain_id = :c AND seq = ANY(:s)"),
            {"c": chain_id, "s": seqs},
        )
        return {int(seq): bytes(digest) for seq, digest in rows}

    @staticmethod
    async def _copy(session: AsyncSession, rows: bytes | memoryview) -> None:
        connection = await session.connection()
        raw = (await connection.get_raw_connection()).driver_connection
        assert raw is not None
        async with (
            raw.cursor() as cursor,
            cursor.copy(f"COPY evidence_records ({COLUMNS}) FROM STDIN (FORMAT binary)") as copy,
        ):
            # Three writes, not one of the rows joined to the header and trailer: psycopg cuts
            # a large buffer into chunks for libpq, and slices of a memoryview are not copies
            # (of bytes they are: the batch's ~2.5 MB was copied twice more before being sent).
            await copy.write(COPY_HEADER)
            await copy.write(memoryview(rows))
            await copy.write(COPY_TRAILER)

    @staticmethod
    async def _alarm(
        session: AsyncSession,
        chain: _ChainRow,
        refused: EvidenceRefused,
        parsed: Parsed,
        walk: _Walk,
    ) -> str:
        """Record why the batch stopped (once per distinct cause, however often it is resent)."""
        kind, state = refused.alarm, refused.state
        arrived = next(
            (h.hex() for seq, h in zip(parsed.seqs, parsed.hashes, strict=True) if seq == refused.seq), ""
        )
        expected = f"seq {walk.head_seq + 1} after {walk.head_hash.hex()}" if walk.head_seq else "seq 1"
        last = (
            await session.execute(
                sa.select(EvidenceAlarm.kind, EvidenceAlarm.seq, EvidenceAlarm.arrived)
                .where(EvidenceAlarm.chain_id == chain.chain_id)
                .order_by(EvidenceAlarm.id.desc())
                .limit(1)
            )
        ).first()
        if last is None or tuple(last) != (kind, refused.seq, arrived):
            session.add(
                EvidenceAlarm(
                    chain_id=chain.chain_id,
                    seq=refused.seq,
                    kind=kind,
                    expected=expected,
                    arrived=arrived,
                    detail=refused.message[:2000],
                )
            )
        return state
