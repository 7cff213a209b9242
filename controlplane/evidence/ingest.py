"""Ingest: the one path by which evidence enters the store (shipped batches, later imports).

A batch is records of one chain, as the JSONL lines the node wrote, in seq order, plus
checkpoint notes. Per batch, under the chain's row lock (so one writer per chain across
replicas, and (chain, seq) stays unique although the primary key must also hold ``ts``):

- every record's hash is recomputed and its ``prev_hash`` must be the hash of the record
  before it (the stored head for the first new one);
- a seq already stored with the same hash is a duplicate (at-least-once delivery: counted,
  not stored again); with another hash it is tampering: an alarm row, the chain marked
  ``tampered``, the batch refused from that record on;
- a seq beyond the next one is a gap: an alarm, nothing from it on is stored (the node
  resends from the ACKed head);
- the records that continue the chain are written with COPY; the chain's head and Merkle
  tree move in the same transaction; the ACK (highest gap-free seq stored) is answered only
  after the commit;
- each checkpoint note must be signed by the node (``verify_checkpoint_signature``, given by
  the application, never defaulted) and, once records 1..size are stored, its root must be
  the Merkle root of their hashes; a mismatch is a tamper alarm naming the checkpoint.

Records before a refused one are stored and acknowledged: they verified on their own.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import multiprocessing
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.db.models import (
    CHAIN_ID_CHARS,
    EVIDENCE_PARTITION_PREFIX,
    EvidenceAlarm,
    EvidenceChain,
    EvidenceCheckpoint,
)
from controlplane.errors import PermissionDenied, shown
from controlplane.evidence.errors import ChainBroken, EvidenceRefused, Gap, Tampered
from controlplane.evidence.tree import StoredTree
from controlplane.limits import INT64_MAX, KEY_ID_CHARS, NAME_CHARS, NODE_ID_CHARS, RESULT_CHARS
from dataplane.evidence import checkpoint as node_checkpoint
from dataplane.evidence.log import GENESIS_HASH, hash_of_line
from dataplane.evidence.merkle import root as merkle_root
from dataplane.evidence.shipper import chain_of

MAX_BATCH_RECORDS = 10_000
POOL_MIN_LINES = 256
"""Smaller batches are parsed on the event loop: a round trip to a worker costs more."""
MAX_RECORD_BYTES = 64 * 1024
MAX_CHECKPOINTS = 16
MAX_NOTE_BYTES = 8 * 1024
TS_MIN = datetime(2000, 1, 1, tzinfo=UTC).timestamp()
TS_MAX = datetime(9999, 1, 1, tzinfo=UTC).timestamp()
CHECKPOINT_ORIGIN = "signalbox.evidence/"

CHAIN_ID_RE = re.compile(
    r"(?P<node>[^\x00-\x1f\x7f]{1,NODE})/(?P<worker>[0-9]{1,9})".replace("NODE", str(NODE_ID_CHARS))
)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SIZE = re.compile(r"0|[1-9][0-9]{0,18}")

CheckpointVerifier = Callable[[str, str, bytes], None]
"""``(note, node_id, public_key)``: returns when ``note`` carries a valid signature by
``node_id``'s certified key (``public_key``: DER SubjectPublicKeyInfo from the certificate
the node presented), raises ``ValueError`` saying why not otherwise."""


def verify_node_checkpoint(note: str, node_id: str, public_key: bytes) -> None:
    """The production check: the node's ECDSA signature in the C2SP note
    (``dataplane.evidence.checkpoint``), with the key of the certificate it presented."""
    if not public_key:
        raise ValueError("no node certificate to check it with")
    try:
        key = load_der_public_key(public_key)
    except ValueError as exc:
        raise ValueError("the node certificate's key cannot be read") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("the node certificate's key is not an ECDSA key")
    checked = node_checkpoint.verify(note.encode(), key)
    if checked.node_id != node_id:
        raise ValueError(f"signed as node {shown(checked.node_id)}, not {shown(node_id)}")


OK, GAP, BROKEN, TAMPERED = "ok", Gap.state, ChainBroken.state, Tampered.state

_COLUMNS = (
    "chain_id, seq, ts, record_id, hash, prev_hash, node_id, correlation_id, tenant_id, api_key_id, model, "
    "outcome, body"
)


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


@dataclass(frozen=True, slots=True)
class _Record:
    line: int
    seq: int
    hash: bytes
    prev_hash: bytes
    ts: datetime
    copy: bytes
    """The record's row in COPY text format (a line): built where it is parsed, so the
    event loop only joins the rows it stores."""


@dataclass(frozen=True, slots=True)
class _Checkpoint:
    index: int
    size: int
    root: bytes
    note: str

    @property
    def name(self) -> str:
        return f"checkpoint {self.index} (size {self.size}, root {self.root.hex()[:16]}…)"


@dataclass(slots=True)
class _Walk:
    """The chain as the batch extends it."""

    head_seq: int
    head_hash: bytes
    tree: StoredTree
    new: list[_Record] = field(default_factory=list)
    duplicates: int = 0
    roots: dict[int, bytes] = field(default_factory=dict)


def _text(value: Any, limit: int) -> str:
    if type(value) is not str:
        return ""
    if len(value) <= limit and "\x00" not in value:
        return value
    return value.replace("\x00", "")[:limit]


def _where(chain_id: str, line: int, seq: int | None = None) -> str:
    at = f"record seq {seq} (line {line} of the batch)" if seq is not None else f"line {line} of the batch"
    return f"chain {shown(chain_id)}: {at}"


def parse_record(chain_id: str, node_id: str, line_no: int, line: bytes) -> _Record:
    """A record line checked on its own: bounded, JSON, its own hash, its chain and node."""
    if len(line) > MAX_RECORD_BYTES:
        raise EvidenceRefused(f"{_where(chain_id, line_no)}: {len(line)} bytes, at most {MAX_RECORD_BYTES}")
    body = line[:-1] if line.endswith(b"\n") else line
    try:
        record = json.loads(body)
    except ValueError as exc:
        raise EvidenceRefused(f"{_where(chain_id, line_no)}: not a JSON record") from exc
    if type(record) is not dict:
        raise EvidenceRefused(f"{_where(chain_id, line_no)}: not a JSON object")
    get = record.get
    seq, digest, prev, ts, record_id = get("seq"), get("hash"), get("prev_hash"), get("ts"), get("record_id")
    # The common case in one expression (this runs for every record shipped); the precise
    # refusal is found by ``_refuse`` when anything is off.
    if not (
        type(seq) is int
        and 1 <= seq <= INT64_MAX
        and type(digest) is str
        and _HEX64.fullmatch(digest)
        and type(prev) is str
        and _HEX64.fullmatch(prev)
        and (type(ts) is float or type(ts) is int)
        and TS_MIN <= ts < TS_MAX
        and type(record_id) is str
        and 0 < len(record_id) <= KEY_ID_CHARS
        and get("node_id") == node_id
        and (get("chain_id") or f"{node_id}/0") == chain_id
    ):
        _refuse(chain_id, node_id, line_no, record)
    if hash_of_line(body) != digest:
        where = _where(chain_id, line_no, seq)
        raise ChainBroken(f"{where}: hash does not match the record's content (edited?)", seq=seq)
    routing = get("routing")
    served = routing.get("served_by") if type(routing) is dict else None
    outcome = get("outcome")
    when = datetime.fromtimestamp(ts, UTC)
    fields = (
        _copy_text(chain_id),
        str(seq),
        when.isoformat(),
        _copy_text(record_id),
        "\\\\x" + digest,
        "\\\\x" + prev,
        _copy_text(node_id),
        _copy_text(_text(get("correlation_id"), NAME_CHARS)),
        _copy_text(_text(get("tenant_id"), NAME_CHARS)),
        _copy_text(_text(get("api_key_id"), NAME_CHARS)),
        _copy_text(_text(served.get("model") if type(served) is dict else None, NAME_CHARS)),
        _copy_text(_text(outcome.get("code") if type(outcome) is dict else None, RESULT_CHARS)),
        "\\\\x" + body.hex(),
    )
    copy = ("\t".join(fields) + "\n").encode()
    return _Record(line_no, seq, bytes.fromhex(digest), bytes.fromhex(prev), when, copy)


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def _copy_text(value: str) -> str:
    """``value`` as a COPY text-format field."""
    return value.translate(_COPY_ESCAPES)


def parse_lines(
    chain_id: str, node_id: str, lines: Sequence[bytes]
) -> tuple[list[_Record], EvidenceRefused | None]:
    """Every line parsed up to the first one refused (and that refusal)."""
    records: list[_Record] = []
    for n, line in enumerate(lines, start=1):
        try:
            records.append(parse_record(chain_id, node_id, n, line))
        except EvidenceRefused as exc:
            return records, exc
    return records, None


def _refuse(chain_id: str, node_id: str, line_no: int, record: dict[str, Any]) -> NoReturn:
    """Raise the refusal that names what is wrong with ``record`` (it failed the fast check)."""
    seq = record.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= INT64_MAX:
        raise EvidenceRefused(f"{_where(chain_id, line_no)}: seq must be an integer from 1 to {INT64_MAX}")
    where = _where(chain_id, line_no, seq)
    digest, prev = record.get("hash"), record.get("prev_hash")
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise EvidenceRefused(f"{where}: hash must be 64 lowercase hex digits", seq=seq)
    if not isinstance(prev, str) or not _HEX64.fullmatch(prev):
        raise EvidenceRefused(f"{where}: prev_hash must be 64 lowercase hex digits", seq=seq)
    if record.get("node_id") != node_id:
        raise EvidenceRefused(f"{where}: node_id is not {shown(node_id)}", seq=seq)
    if chain_of(record, node_id) != chain_id:
        raise EvidenceRefused(f"{where}: belongs to chain {shown(chain_of(record, node_id))}", seq=seq)
    ts = record.get("ts")
    if not isinstance(ts, int | float) or isinstance(ts, bool) or not TS_MIN <= ts < TS_MAX:
        raise EvidenceRefused(f"{where}: ts must be seconds since the epoch (years 2000..9998)", seq=seq)
    raise EvidenceRefused(f"{where}: record_id must be 1..{KEY_ID_CHARS} characters", seq=seq)


def parse_checkpoint(chain_id: str, index: int, note: str) -> _Checkpoint:
    """The body of a C2SP tlog-checkpoint note: origin, size, base64 root, extensions, a blank
    line, signature lines (which ``verify_checkpoint_signature`` checks)."""
    where = f"chain {shown(chain_id)}: checkpoint {index}"
    if len(note.encode()) > MAX_NOTE_BYTES:
        raise EvidenceRefused(f"{where}: more than {MAX_NOTE_BYTES} bytes")
    body, blank, signatures = note.partition("\n\n")
    if not blank or not signatures.strip():
        raise EvidenceRefused(f"{where}: a note is a body, an empty line and signature lines")
    lines = body.split("\n")
    if len(lines) < 3:
        raise EvidenceRefused(f"{where}: the body needs origin, size and root lines")
    if lines[0] != CHECKPOINT_ORIGIN + chain_id:
        raise EvidenceRefused(
            f"{where}: origin must be {CHECKPOINT_ORIGIN + chain_id!r}, not {shown(lines[0])}"
        )
    if not _SIZE.fullmatch(lines[1]) or int(lines[1]) > INT64_MAX:
        raise EvidenceRefused(f"{where}: size must be a decimal without leading zeros, not {shown(lines[1])}")
    try:
        root_hash = base64.b64decode(lines[2], validate=True)
    except binascii.Error as exc:
        raise EvidenceRefused(f"{where}: root is not base64") from exc
    if len(root_hash) != 32:
        raise EvidenceRefused(f"{where}: root must be 32 bytes, not {len(root_hash)}")
    return _Checkpoint(index, int(lines[1]), root_hash, note)


class EvidenceIngest:
    """Verifies, commits and acknowledges batches; one per control plane."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        verify_checkpoint_signature: CheckpointVerifier,
        *,
        workers: int = 0,
    ) -> None:
        """``workers``: processes that parse and hash large batches (0: on the event loop)."""
        self._sessions = sessions
        self._verify_signature = verify_checkpoint_signature
        self._workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._partitions: set[str] = set()
        """Monthly partitions known to exist (or whose month the DEFAULT partition keeps)."""

    async def ingest(self, node_id: str, batch: Batch, public_key: bytes = b"") -> Ack:
        """Take ``batch`` from the authenticated node ``node_id``; the ACK after commit."""
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

        records, refused = await self._parse(chain_id, node_id, batch.lines)
        await self._ensure_partitions({r.ts for r in records})

        async with self._sessions() as session, session.begin():
            chain = await self._lock_chain(session, chain_id, node_id)
            walk = _Walk(chain.head_seq, chain.head_hash, StoredTree.from_bytes(chain.tree, chain.head_seq))
            wanted = {c.size for c in checkpoints}
            stored = await self._stored_hashes(
                session, chain_id, [r.seq for r in records if r.seq <= chain.head_seq]
            )
            walk_refused = self._walk(chain_id, records, stored, walk, wanted)
            refused = walk_refused or refused
            if walk.new:
                await self._copy(session, walk.new)
            state = chain.state
            if refused is not None:
                state = await self._alarm(session, chain, refused, records, walk)
            elif state in (GAP, BROKEN):
                state = OK  # the node resent what was missing
            taken = 0
            if refused is None:
                for checkpoint in checkpoints:
                    outcome = await self._checkpoint(session, chain, walk, checkpoint)
                    if isinstance(outcome, EvidenceRefused):
                        refused = outcome
                        if isinstance(outcome, Tampered):
                            state = TAMPERED
                        break
                    taken += outcome
            if chain.state == TAMPERED:
                state = TAMPERED  # stays until someone has looked; ingest never clears it
            await session.execute(
                sa.update(EvidenceChain)
                .where(EvidenceChain.chain_id == chain_id)
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

    async def _parse(
        self, chain_id: str, node_id: str, lines: Sequence[bytes]
    ) -> tuple[list[_Record], EvidenceRefused | None]:
        """Parsing and hashing is most of ingest's CPU (CPython's JSON, twice per record): a
        large batch goes to a worker process, so batches of several chains verify at once."""
        if self._workers <= 0 or len(lines) < POOL_MIN_LINES:
            return parse_lines(chain_id, node_id, lines)
        if self._pool is None:
            # spawn: forking a process that runs gRPC's threads is not safe.
            self._pool = ProcessPoolExecutor(self._workers, mp_context=multiprocessing.get_context("spawn"))
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, parse_lines, chain_id, node_id, list(lines)
        )

    def close(self) -> None:
        """Stop the worker processes (idempotent)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    @staticmethod
    def _walk(
        chain_id: str,
        records: list[_Record],
        stored: dict[int, bytes],
        walk: _Walk,
        wanted: set[int],
    ) -> EvidenceRefused | None:
        stored_head = walk.head_seq
        for r in records:
            where = _where(chain_id, r.line, r.seq)
            if r.seq <= stored_head:
                known = stored.get(r.seq)
                if known == r.hash:
                    walk.duplicates += 1
                    continue
                return Tampered(
                    f"{where}: stored with hash {known.hex() if known else '?'}, arrived with {r.hash.hex()}",
                    seq=r.seq,
                )
            expected = walk.head_seq + 1
            if r.seq > expected:
                return Gap(f"{where}: gap, expected seq {expected} next (resend from it)", seq=r.seq)
            if r.seq < expected:
                return ChainBroken(f"{where}: out of order, seq {walk.head_seq} came before it", seq=r.seq)
            if r.prev_hash != (walk.head_hash if walk.head_seq else bytes.fromhex(GENESIS_HASH)):
                return ChainBroken(f"{where}: prev_hash does not link to seq {walk.head_seq}", seq=r.seq)
            walk.new.append(r)
            walk.head_seq, walk.head_hash = r.seq, r.hash
            walk.tree.append(r.hash)
            if walk.tree.size in wanted:
                walk.roots[walk.tree.size] = walk.tree.root()
        return None

    async def _lock_chain(self, session: AsyncSession, chain_id: str, node_id: str) -> EvidenceChain:
        await session.execute(
            pg_insert(EvidenceChain)
            .values(
                chain_id=chain_id, node_id=node_id, head_seq=0, head_hash=b"", tree=b"", state=OK, alarm=""
            )
            .on_conflict_do_nothing(index_elements=["chain_id"])
        )
        chain = (
            await session.execute(
                sa.select(EvidenceChain).where(EvidenceChain.chain_id == chain_id).with_for_update()
            )
        ).scalar_one()
        await session.refresh(chain)
        return chain

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
    async def _copy(session: AsyncSession, records: list[_Record]) -> None:
        connection = await session.connection()
        raw = (await connection.get_raw_connection()).driver_connection
        assert raw is not None
        async with (
            raw.cursor() as cursor,
            cursor.copy(f"COPY evidence_records ({_COLUMNS}) FROM STDIN") as copy,
        ):
            await copy.write(b"".join(r.copy for r in records))

    @staticmethod
    async def _alarm(
        session: AsyncSession,
        chain: EvidenceChain,
        refused: EvidenceRefused,
        records: list[_Record],
        walk: _Walk,
    ) -> str:
        """Record why the batch stopped (once per distinct cause, however often it is resent)."""
        kind, state = refused.alarm, refused.state
        arrived = next((r.hash.hex() for r in records if r.seq == refused.seq), "")
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

    async def _checkpoint(
        self, session: AsyncSession, chain: EvidenceChain, walk: _Walk, checkpoint: _Checkpoint
    ) -> int | EvidenceRefused:
        """Store ``checkpoint`` once its records are stored: 1 if new, 0 if already held;
        the refusal when it cannot be checked yet or its root is not the records'."""
        chain_id = chain.chain_id
        if checkpoint.size > walk.head_seq or checkpoint.size == 0:
            return EvidenceRefused(
                f"chain {shown(chain_id)}: {checkpoint.name}: only records 1..{walk.head_seq} are stored; "
                "ship a checkpoint after the records it covers"
            )
        root = walk.roots.get(checkpoint.size)
        if root is None:
            rows = await session.execute(
                sa.text("SELECT hash FROM evidence_records WHERE chain_id = :c AND seq <= :n ORDER BY seq"),
                {"c": chain_id, "n": checkpoint.size},
            )
            root = merkle_root([bytes(h) for (h,) in rows])
        matches = root == checkpoint.root
        held = (
            await session.execute(
                sa.select(sa.func.count())
                .select_from(EvidenceCheckpoint)
                .where(
                    EvidenceCheckpoint.chain_id == chain_id,
                    EvidenceCheckpoint.tree_size == checkpoint.size,
                    EvidenceCheckpoint.root_hash == checkpoint.root,
                )
            )
        ).scalar_one()
        if not held:
            session.add(
                EvidenceCheckpoint(
                    chain_id=chain_id,
                    tree_size=checkpoint.size,
                    root_hash=checkpoint.root,
                    note=checkpoint.note,
                    root_matches=matches,
                )
            )
        if matches:
            return 0 if held else 1
        refused = Tampered(
            f"chain {shown(chain_id)}: {checkpoint.name}: the stored records 1..{checkpoint.size} make root "
            f"{root.hex()}, not {checkpoint.root.hex()}",
            seq=checkpoint.size,
        )
        if not held:
            session.add(
                EvidenceAlarm(
                    chain_id=chain_id,
                    seq=checkpoint.size,
                    kind="checkpoint_mismatch",
                    expected=root.hex(),
                    arrived=checkpoint.root.hex(),
                    detail=refused.message[:2000],
                )
            )
        return refused

    async def _ensure_partitions(self, times: set[datetime]) -> None:
        """Monthly partitions for ``times``, made in a short transaction of their own (it takes
        a strong lock on the parent): once per month per process."""
        months = {(t.year, t.month) for t in times}
        for year, month in sorted(months):
            name = f"{EVIDENCE_PARTITION_PREFIX}y{year:04d}m{month:02d}"
            if name in self._partitions:
                continue
            start = datetime(year, month, 1, tzinfo=UTC)
            end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
            async with self._sessions() as session, session.begin():
                await session.execute(
                    sa.text("SELECT pg_advisory_xact_lock(hashtext('evidence_partitions'))")
                )
                exists = (await session.execute(sa.text("SELECT to_regclass(:n)"), {"n": name})).scalar()
                if exists is None:
                    # Records of that month already in DEFAULT would make the new partition's
                    # constraint fail: they stay where they are, and so does the month.
                    in_default = (
                        await session.execute(
                            sa.text(
                                "SELECT EXISTS (SELECT 1 FROM evidence_records_default WHERE ts >= :a AND ts < :b)"
                            ),
                            {"a": start, "b": end},
                        )
                    ).scalar()
                    if not in_default:
                        await session.execute(
                            sa.text(
                                f"CREATE TABLE {name} PARTITION OF evidence_records "
                                f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
                            )
                        )
                        await session.execute(
                            sa.text(f"REVOKE UPDATE, DELETE, TRUNCATE ON {name} FROM PUBLIC, CURRENT_USER")
                        )
                        await session.execute(
                            sa.text(
                                f"CREATE TRIGGER {name}_no_truncate BEFORE TRUNCATE ON {name} "
                                "FOR EACH STATEMENT EXECUTE FUNCTION evidence_append_only()"
                            )
                        )
            self._partitions.add(name)
