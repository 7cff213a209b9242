"""Retention: old monthly partitions dropped, each chain's pruned range stated and signed.

``EvidenceRetention.prune(before)`` takes every monthly partition of ``evidence_records``
that ends at or before ``before`` and holds no record received at or after it (a record is
kept at least until ``before`` passes its receipt: ``_received_since``) and, in one
transaction (so nothing is half done; every lock waited for at most ``DEFAULT_LOCK_TIMEOUT``,
then ``PruneBusy``):

0. moves records of such months out of the DEFAULT partition into monthly partitions of
   their own (``Partitions.rehome_default``: a late record could land there before ingest
   checked past months' partitions under a lock), so no month is ever beyond retention;

1. locks them against writes before reading anything of them, their receipt times too
   (``WRITE_LOCK``: ingest waits, reads do not; the privileges it needs are ownership only,
   as for the DROP) and, per chain with records in them, takes its next prefix: seqs
   ``first..last``, ``first`` one after the previous statement's ``last`` (1 for the first)
   and ``last`` the chain's newest seq in those partitions. Record times are the node's
   word: a node whose clock was ahead and then stepped back dates a record earlier than the
   ones before it, which then sit in a later partition (or DEFAULT). Such a prefix is not
   all in the partitions to drop: the partition holding the chain's newest seq is kept back
   until the earlier records' month goes too (``_exact``), so a statement states exactly
   the records dropped, never one still stored. Were a chain's prefix not all stored
   anywhere (a gap), nothing is pruned;
2. writes a *pruned-range statement* per chain into ``evidence_pruned_ranges``: a DSSE
   envelope signed by the control plane's snapshot signing keys (the format is
   ``dataplane.evidence.pruned``'s) stating seqs ``first..last`` dropped, the hash of the
   last one and the compact range of records ``1..last``, with which and the remaining
   leaves the root of any later checkpoint is recomputed;
3. deletes each stated chain's checkpoints and compact ranges the statement superseded
   (``evidence_prune_superseded``, migration 0028): those of sizes below the newest one at
   or below ``last`` (a node signs a checkpoint about every second; without this they grew
   forever). Nothing reads them once records ``1..last`` are gone: a later checkpoint is
   checked, and an export proves the remaining records, from the statement's compact range;
   the newest at or below ``last`` and every one above it stay, and so does a checkpoint
   whose root did not match (an alarm's signed note). The function is the only DELETE the
   evidence triggers let through (``PruneResult.superseded``: None where its owner has no
   DELETE, a non-superuser owner's deployment: nothing deleted, README);
4. drops the partitions (the owner path partitions are created by; the application still
   has no UPDATE or DELETE on any row).

The chains' heads and stored trees are not touched: ingest continues every chain.

``pruned_statement(chain_id)`` returns the newest statement of a chain (a ``PrunedStatement``:
its envelope bytes and decoded fields), or None when nothing of it was pruned. Its
``compact_range`` is the prefix a pack's multiproof starts from
(``controlplane.evidence.export``); ``verify_statement`` checks an envelope with the control
plane's public keys. Reading and checking statements is ``dataplane.evidence.pruned``'s, so
``signalbox evidence verify`` checks the statements a pack carries without the control plane.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.db.failures import database_status
from controlplane.db.models import EVIDENCE_PARTITION_PREFIX, EvidencePrunedRange
from controlplane.db.session import database_now
from controlplane.errors import InvalidArgument, clip, shown
from controlplane.evidence.errors import PruneBusy, PruneFailed, PruneRefused
from controlplane.evidence.partitions import LOCK, Partitions, month_bounds
from controlplane.evidence.tree import StoredTree
from controlplane.keys import Keyring, Signer
from dataplane.evidence.merkle import Tree
from dataplane.evidence.pruned import PRUNED_PAYLOAD_TYPE, PrunedStatement, decode_statement, verify_statement
from dataplane.snapshot.envelope import pae

__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "PRUNED_PAYLOAD_TYPE",
    "EvidenceRetention",
    "PruneResult",
    "PrunedStatement",
    "countersigned",
    "decode_statement",
    "verify_statement",
]

log = logging.getLogger(__name__)

DEFAULT_LOCK_TIMEOUT = 2.0
"""Seconds a prune waits for any one lock before it gives up (``PruneBusy``, nothing pruned).
Its ``DROP TABLE`` needs ACCESS EXCLUSIVE on ``evidence_records``: a long export or query
holding it would otherwise keep the prune waiting, and every ingest transaction (ROW
EXCLUSIVE, queued behind that request) with it, for as long as the reader runs. Well below
ingest's own lock timeout (``controlplane.evidence.ingest.DEFAULT_LOCK_TIMEOUT``), so a
batch caught behind a prune's wait is stored late, not refused."""

_MONTHLY = re.compile(re.escape(EVIDENCE_PARTITION_PREFIX) + r"y([0-9]{4})m([0-9]{2})")


@dataclass(frozen=True, slots=True)
class PruneResult:
    partitions: list[str]
    """The partitions dropped."""
    statements: list[PrunedStatement]
    superseded: dict[str, tuple[int, int] | None] = field(default_factory=dict)
    """Per stated chain: how many of its checkpoints and compact ranges were deleted (step 3);
    None when ``evidence_prune_superseded``'s owner may not delete (nothing was)."""


def _signature(signer: Signer, payload: bytes) -> dict[str, str]:
    sig = signer.private_key.sign(pae(PRUNED_PAYLOAD_TYPE, payload))
    return {"keyid": signer.key_id, "sig": base64.b64encode(sig).decode()}


def countersigned(envelope: str, signer: Signer) -> str:
    """``envelope`` with a signature by ``signer`` added unless it has one: an Evidence Pack
    sealed by the active key carries statements that key vouches for too, so a verifier
    holding only the current key checks statements signed before a key rotation."""
    outer = json.loads(envelope)
    if any(s.get("keyid") == signer.key_id for s in outer["signatures"]):
        return envelope
    outer["signatures"].append(_signature(signer, base64.b64decode(outer["payload"])))
    return json.dumps(outer, separators=(",", ":"))


class EvidenceRetention:
    """Prunes old partitions behind signed statements; one per control plane."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        keyring: Keyring,
        partitions: Partitions,
        *,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    ) -> None:
        """``lock_timeout``: seconds a prune waits for any one lock (``DEFAULT_LOCK_TIMEOUT``)."""
        self._sessions = sessions
        self._keyring = keyring
        self._partitions = partitions
        self._lock_timeout = lock_timeout

    async def pruned_statement(self, chain_id: str) -> PrunedStatement | None:
        """The newest pruned-range statement of ``chain_id`` (None: nothing of it pruned)."""
        async with self._sessions() as session:
            return await newest_statement(session, chain_id)

    async def pruned(self) -> dict[str, PrunedStatement]:
        """The newest statement of every chain that has one."""
        async with self._sessions() as session:
            newest = (
                sa.select(EvidencePrunedRange.chain_id, sa.func.max(EvidencePrunedRange.last_seq).label("m"))
                .group_by(EvidencePrunedRange.chain_id)
                .subquery()
            )
            rows = await session.execute(
                sa.select(EvidencePrunedRange.statement).join(
                    newest,
                    sa.and_(
                        newest.c.chain_id == EvidencePrunedRange.chain_id,
                        newest.c.m == EvidencePrunedRange.last_seq,
                    ),
                )
            )
            statements = [decode_statement(bytes(s)) for (s,) in rows]
        return {s.chain_id: s for s in statements}

    async def trusted_now(self, now: datetime) -> datetime:
        """The earlier of ``now`` (this host's clock) and the database's: what pruning goes by.
        Dropped evidence cannot be brought back: one clock stepped far ahead (a bad time source,
        a host that booted in 2099 before NTP set it right) would otherwise let the timer drop
        every month at once, or a manual prune the month nodes still ship into. It takes both
        clocks to be wrong; a clock that is behind only delays retention."""
        async with self._sessions() as session:
            database = await database_now(session)
        return min(now, database)

    async def prune_older_than(self, keep: timedelta, now: datetime) -> PruneResult:
        """The retention timer's round: ``prune`` what is older than ``keep`` (``trusted_now``)."""
        return await self.prune(await self.trusted_now(now) - keep)

    async def prune_until(self, before: datetime, now: datetime) -> PruneResult:
        """An operator's prune: ``before`` may not be later than ``trusted_now``, or a month
        still being written would be dropped while nodes ship into it."""
        if before > await self.trusted_now(now):
            raise InvalidArgument("before", "must not be in the future")
        return await self.prune(before)

    async def prune(self, before: datetime) -> PruneResult:
        """Drop every monthly partition entirely before ``before``, each chain's range stated
        first. ``PruneFailed`` names the step the database refused, ``PruneBusy`` the lock
        not granted within the lock timeout (nothing is pruned)."""
        if before.tzinfo is None:
            raise ValueError("before must carry a time zone")
        with self._step(f"prune the evidence partitions before {before.isoformat()}", "a lock it needs"):
            return await self._prune(before)

    def _step(self, what: str, lock: str) -> contextlib.AbstractContextManager[None]:
        return _step(what, lock, self._lock_timeout)

    async def _prune(self, before: datetime) -> PruneResult:
        async with self._sessions() as session, session.begin():
            # Every lock wait of the transaction bounded: see ``DEFAULT_LOCK_TIMEOUT``.
            await session.execute(
                sa.text("SELECT set_config('lock_timeout', :t, true)"),
                {"t": f"{max(1, round(self._lock_timeout * 1000))}ms"},
            )
            with self._step("take the evidence partitions' lock", PARTITIONS_LOCK):
                await session.execute(sa.text(LOCK))
            with self._step(
                "move the DEFAULT partition's records of past months into partitions of their own",
                "its ACCESS EXCLUSIVE lock on evidence_records and evidence_records_default",
            ):
                await self._partitions.rehome_default(session, before)
            names = await _partitions_before(session, before)
            # Locked before anything of them is read: a write still under way (see
            # ``WRITE_LOCK``) is committed, so what was received is settled and is stated.
            for name in names:
                with self._step(
                    f"lock partition {name} against writes", f"its SHARE ROW EXCLUSIVE lock on {name}"
                ):
                    await session.execute(sa.text(WRITE_LOCK.format(name=name)))
            names = [name for name in names if not await _received_since(session, name, before)]
            if not names:
                return PruneResult([], [])
            spans = await _spans(session, names, before)
            names = _exact(names, spans)
            if not names:
                return PruneResult([], [])
            now = datetime.now(UTC)
            statements = []
            signers = await self._keyring.signers(session)
            for chain_id, (first, parts) in sorted(spans.items()):
                newest = [m for p, (m, _) in parts.items() if p in names]
                if not newest:
                    continue  # none of its records beyond its pruned range are dropped now
                last = max(newest)
                previous = await newest_statement(session, chain_id)
                tree: Tree = previous.tree() if previous is not None else StoredTree()
                hashes = (
                    await session.execute(
                        sa.text(
                            "SELECT hash FROM evidence_records WHERE chain_id = :c "
                            "AND seq >= :a AND seq <= :b ORDER BY seq"
                        ),
                        {"c": chain_id, "a": first, "b": last},
                    )
                ).all()
                if len(hashes) != last - first + 1:
                    raise _gap(chain_id, before, first, last, len(hashes))
                last_hash = b""
                for (digest,) in hashes:
                    last_hash = bytes(digest)
                    tree.append(last_hash)
                checkpoint = (
                    await session.execute(
                        sa.text(
                            "SELECT note FROM evidence_checkpoints WHERE chain_id = :c AND tree_size >= :n "
                            "AND root_matches ORDER BY tree_size LIMIT 1"
                        ),
                        {"c": chain_id, "n": last},
                    )
                ).scalar()
                payload = json.dumps(
                    {
                        "chain_id": chain_id,
                        "first_seq": first,
                        "last_seq": last,
                        "last_hash": last_hash.hex(),
                        "compact_range": [{"height": h, "hash": d.hex()} for h, d in tree._stack],
                        "checkpoint": checkpoint or "",
                        "pruned_before": before.astimezone(UTC).isoformat(),
                        "at": now.isoformat(),
                    },
                    sort_keys=True,
                    separators=(",", ":"),
                ).encode()
                envelope = json.dumps(
                    {
                        "payloadType": PRUNED_PAYLOAD_TYPE,
                        "payload": base64.b64encode(payload).decode(),
                        "signatures": [_signature(s, payload) for s in signers],
                    },
                    separators=(",", ":"),
                ).encode()
                session.add(
                    EvidencePrunedRange(
                        chain_id=chain_id,
                        first_seq=first,
                        last_seq=last,
                        last_hash=last_hash,
                        pruned_before=before,
                        statement=envelope,
                    )
                )
                statements.append(decode_statement(envelope))
            await session.flush()
            superseded = {s.chain_id: await _prune_superseded(session, s.chain_id) for s in statements}
            for name in names:
                with self._step(
                    f"drop partition {name}", f"its ACCESS EXCLUSIVE lock on evidence_records and {name}"
                ):
                    await session.execute(sa.text(f"DROP TABLE {name}"))
        for name in names:
            self._partitions.forget(name)
        return PruneResult(names, statements, superseded)


REASON_CHARS = 300
"""At most this much of the database's message is quoted (its primary message: names, no row
values, which it keeps for its DETAIL)."""


PARTITIONS_LOCK = (
    "the partitions' advisory lock (held by a replica making or dropping partitions, or by "
    "ingest storing records of a past month)"
)

LOCK_NOT_AVAILABLE = "55P03"
"""SQLSTATE of a lock not granted within ``lock_timeout``."""


@contextmanager
def _step(what: str, lock: str = "", timeout: float = 0.0) -> Iterator[None]:
    """``PruneFailed`` naming ``what`` and the database's reason when it refuses the step;
    ``PruneBusy`` naming ``lock`` (what the step waited for) when it was not granted within
    ``timeout`` (a step with no ``lock`` leaves that to the step around it). Any other
    transient failure (``database_status``: the database down, a statement timeout, a
    deadlock) passes unchanged; the next round retries it."""
    try:
        yield
    except sa.exc.DBAPIError as exc:
        orig = exc.orig
        state = getattr(orig, "sqlstate", None) or "?"
        if state == LOCK_NOT_AVAILABLE and lock:
            raise PruneBusy(
                f"evidence retention could not {what}: {lock} was not granted within {timeout:g} s "
                "(another session holds it, e.g. a long export or query of the evidence or a "
                "transaction left open); nothing was pruned, retry later"
            ) from exc
        if database_status(exc) is not None:
            raise
        diag = getattr(orig, "diag", None)
        reason = (getattr(diag, "message_primary", None) or type(orig).__name__).strip()
        message = f"evidence retention could not {what}: {clip(reason, REASON_CHARS)} (SQLSTATE {state})"
        if state == "42501":  # insufficient_privilege, e.g. "must be owner of table ..."
            message += (
                "; the control plane's database role must own the evidence partitions it drops "
                "(README, Evidence)"
            )
        raise PruneFailed(f"{message}; nothing was pruned") from exc


async def _prune_superseded(session: AsyncSession, chain_id: str) -> tuple[int, int] | None:
    """Step 3 for ``chain_id``, its statement flushed: (checkpoints, compact ranges) deleted."""
    row = (
        await session.execute(sa.text("SELECT * FROM evidence_prune_superseded(:c)"), {"c": chain_id})
    ).one()
    if row[0] is None:
        log.warning(
            "evidence retention kept chain %s's superseded checkpoints: the owner of "
            "evidence_prune_superseded has no DELETE on evidence_checkpoints and evidence_frontiers",
            shown(chain_id),
        )
        return None
    return int(row[0]), int(row[1])


async def newest_statement(session: AsyncSession, chain_id: str) -> PrunedStatement | None:
    row = (
        await session.execute(
            sa.select(EvidencePrunedRange.statement)
            .where(EvidencePrunedRange.chain_id == chain_id)
            .order_by(EvidencePrunedRange.last_seq.desc())
            .limit(1)
        )
    ).scalar()
    return decode_statement(bytes(row)) if row is not None else None


_Spans = dict[str, tuple[int, dict[str, tuple[int, int]]]]
"""Per chain: the first seq after its pruned range and, per partition holding seqs from it
on, the newest of them and how many."""


async def _spans(session: AsyncSession, names: Sequence[str], before: datetime) -> _Spans:
    """The ``_Spans`` of the chains with records in partitions ``names`` beyond their pruned
    ranges. ``PruneRefused`` when a chain's seqs from its first to its newest there are not
    all stored anywhere (a gap): nothing is pruned."""
    union = " UNION ALL ".join(f"SELECT chain_id, seq, '{n}' AS p FROM {n}" for n in names)
    rows = await session.execute(
        sa.text(
            f"SELECT r.chain_id, coalesce(d.last, 0) + 1, r.p, max(r.seq), count(*) FROM ({union}) r "
            "LEFT JOIN (SELECT chain_id, max(last_seq) AS last FROM evidence_pruned_ranges "
            "GROUP BY chain_id) d ON d.chain_id = r.chain_id WHERE r.seq > coalesce(d.last, 0) "
            "GROUP BY r.chain_id, d.last, r.p"
        )
    )
    spans: _Spans = {}
    for chain_id, first, name, newest, count in rows:
        spans.setdefault(chain_id, (int(first), {}))[1][name] = (int(newest), int(count))
    for chain_id, (first, parts) in spans.items():
        last = max(m for m, _ in parts.values())
        if sum(c for _, c in parts.values()) == last - first + 1:
            continue
        stored = (
            await session.execute(
                sa.text(
                    "SELECT count(*) FROM evidence_records WHERE chain_id = :c AND seq >= :a AND seq <= :b"
                ),
                {"c": chain_id, "a": first, "b": last},
            )
        ).scalar_one()
        if stored != last - first + 1:
            raise _gap(chain_id, before, first, last, stored)
    return spans


def _gap(chain_id: str, before: datetime, first: int, last: int, stored: int) -> PruneRefused:
    return PruneRefused(
        f"chain {shown(chain_id)}: the partitions before {before.isoformat()} hold its seq {last}, "
        f"but only {stored} of its seqs {first}..{last} are stored (a gap): nothing was pruned"
    )


def _exact(names: Sequence[str], spans: _Spans) -> list[str]:
    """The partitions of ``names`` to drop: each chain's records in them beyond its pruned
    range are exactly its next seqs ``first..last``, which its statement then says were
    dropped. Record times are the node's word: a node whose clock stepped back dates a record
    earlier than the ones before it, which then sit in a later partition; the partition
    holding its newest seq here is kept back (with it, every chain's records in it) until the
    earlier ones' partitions go too. A statement never claims a record that is still stored."""
    kept: set[str] = set()
    changed = True
    while changed:
        changed = False
        for first, parts in spans.values():
            live = {p: v for p, v in parts.items() if p not in kept}
            if live and sum(c for _, c in live.values()) != max(m for m, _ in live.values()) - first + 1:
                kept.add(max(live, key=lambda p: live[p][0]))
                changed = True
    return [name for name in names if name not in kept]


async def _received_since(session: AsyncSession, name: str, before: datetime) -> bool:
    """Whether partition ``name`` holds a record received at or after ``before``: it is kept
    whole for now. A record's ``ts`` is the node's word: a node whose clock is behind (or one
    that ships late) dates records weeks back, and partitioned by that date they were dropped
    soon after receipt. Kept until everything in it was received before the cut-off, every
    record is kept at least the retention period from its receipt (by the database's clock)."""
    with _step(f"read partition {name}"):
        found = await session.execute(sa.text(RECEIVED_SINCE.format(name=name)), {"b": before})
    return bool(found.scalar())


WRITE_LOCK = "ALTER TABLE {name} ENABLE TRIGGER evidence_records_append_only"
"""Step 1's lock on partition ``name``: SHARE ROW EXCLUSIVE to the commit, which every
write (ROW EXCLUSIVE: ingest's COPY) waits for and reads do not. Ingest takes the
partitions' advisory lock (``Partitions.hold``) only for months past by its replica's
clock, and not in its last attempt: a replica whose clock is behind, or a batch begun as
the month ended, writes into a month retention drops without it. Without this lock its
record, not yet committed as the spans are read, went with the DROP (which waits for the
writer) unstated. ``LOCK TABLE`` in any mode that conflicts with writes needs UPDATE,
DELETE or TRUNCATE on the table, which migration 0012 revoked from a non-superuser owner
(append-only): granting them back would undo that. ``ALTER TABLE``, like step 4's
``DROP TABLE``, needs ownership only; the trigger named is the append-only one every
partition has (cloned from the parent's, migration 0012), enabled, so nothing changes but
the lock (were it disabled, it is enabled again)."""

RECEIVED_SINCE = "SELECT EXISTS (SELECT 1 FROM {name} WHERE received_at >= :b)"
"""Read by the BRIN index on ``received_at`` (migration 0025), not a scan of the month."""


async def _partitions_before(session: AsyncSession, before: datetime) -> list[str]:
    """The monthly partitions of ``evidence_records`` whose whole month is before ``before``."""
    rows = await session.execute(
        sa.text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'evidence_records'::regclass"
        )
    )
    names: Sequence[str] = sorted(name for (name,) in rows)
    return [
        name
        for name in names
        if (m := _MONTHLY.fullmatch(name)) is not None
        and month_bounds(int(m.group(1)), int(m.group(2)))[1] <= before
    ]
