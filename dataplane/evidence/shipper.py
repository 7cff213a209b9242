"""Ships the node's evidence log to the control plane: at-least-once, resumable.

The log is read from a persisted cursor, ``<evidence dir>/<chain>.shipped`` (the seq of
the last record the control plane acknowledged, and the segment and byte offset just after
it; a cursor without ``segment`` is in the first), in batches of whole lines of one
segment, exactly as written. A batch is sent on the EvidenceService stream of the node
port (mutual TLS: the control plane knows the node by its certificate); the control plane
answers after its commit with the highest gap-free seq it holds, and only then does the
cursor move (written to a temporary file and renamed over the old one, so a crash leaves
either cursor, never half of one; not fsynced, see ``write_cursor``). A crash between the
commit and the cursor write resends records the control plane already holds: it counts them
as duplicates.

**When.** Only records the log has fsynced are read (``durable_seq``): the control plane
never holds a record that a power cut could take from the node, which would otherwise reuse
its seq with another hash and be taken for tampering. A full batch is followed at once by the
next; after a partial one the shipper waits ``interval`` (default 1 s), so a lightly loaded
node sends one batch a second instead of one per fsync round. Shipping costs the node per
batch (reading, a stream message, the cursor), not per record.

A batch refused from some record on (the control plane names it) moves the cursor to what
was acknowledged and, after a backoff, resends from there: a record the node rewrote after
a crash is resent as it is now, and tampering keeps being refused and alarmed on the
control plane. The connection is retried with the backoff the node gives (config sync's
full jitter).

**Checkpoints.** Each batch carries the newest signed checkpoint of the log
(``dataplane.evidence.checkpoint``) that its records complete. The log signs on its own clock,
so its last checkpoint is often signed after the records it covers were sent: when there is
nothing to read, such a checkpoint goes alone in a batch with no records, as soon as the
control plane holds everything it covers. A checkpoint is kept until the control plane
answers: an interrupted send is retried, so the newest records of an idle chain are proven
in the end, not only once more traffic comes; a refused one is dropped (a checkpoint the
control plane will never take must not hold back the records after it).

**Stopping.** A node that stops (``drain``) has the rest sent at once, without the wait
between batches, until the control plane holds every record and the last checkpoint, the
stream goes down, or a time limit passes: a node scaled away together with its disk would
otherwise take up to ``interval`` of evidence and its last checkpoint with it.

**Pruning.** After each acknowledgement the shipper deletes the segments
(``dataplane.evidence.segments``) whose every record is acknowledged (the cursor is at or
past their last seq), never the newest one (the log writes there). First it persists the
chain's base (the last pruned record's seq and hash and the compact range of the pruned
prefix's tree, fsynced and renamed), then it deletes the segments and fsyncs the directory;
a crash in between leaves segments the base covers, which the node deletes at start. A
node that never ships never prunes. The spool (``dataplane.evidence.spool``) is told what
was acknowledged and what was pruned.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from dataplane.evidence import checkpoint, merkle, segments
from dataplane.evidence.spool import Spool
from signalbox.api.evidence.v1 import evidence_pb2, evidence_pb2_grpc
from signalbox.tls import ClientTls, aio_channel

log = logging.getLogger("signalbox.dataplane.evidence.shipper")

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
BATCH_RECORDS = 2000
BATCH_BYTES = 4 * 1024 * 1024
ACK_TIMEOUT = 60.0
DEFAULT_INTERVAL = 1.0
DEFAULT_DRAIN = 5.0
"""Seconds a stopping node gives its shipper to send the rest (``EvidenceShipper.drain``)."""
"""Seconds between batches while they are not full."""


@dataclass(frozen=True, slots=True)
class Cursor:
    """How far the control plane acknowledged: the last seq, and the byte offset after it in
    the segment starting at seq ``segment`` (0: not known, found by counting lines)."""

    seq: int = 0
    offset: int = 0
    segment: int = 1


def cursor_path(log_file: Path, chain_id: str) -> Path:
    return log_file.parent / f"{_SAFE_NAME.sub('_', chain_id)}.shipped"


def read_cursor(path: Path) -> Cursor:
    """The persisted cursor; the start when there is none or it does not read (a cursor
    lost to a power cut: everything after the pruned prefix is resent, as duplicates)."""
    try:
        data = json.loads(path.read_bytes())
        cursor = Cursor(int(data["seq"]), int(data["offset"]), int(data.get("segment", 1)))
    except FileNotFoundError:
        return Cursor()
    except (ValueError, KeyError, TypeError, RecursionError) as exc:  # RecursionError: nested too deep
        log.warning("evidence cursor %s unreadable (%s): shipping resends from the start", path, exc)
        return Cursor()
    if min(cursor.seq, cursor.offset, cursor.segment) < 0:
        log.warning("evidence cursor %s holds a negative position: shipping resends from the start", path)
        return Cursor()
    return cursor


def write_cursor(path: Path, cursor: Cursor) -> None:
    """Written whole and renamed over the old one, not fsynced: after a power cut the cursor
    may be older than the last ACK (or unreadable), which only resends records the control
    plane counts as duplicates. An fsync per batch cost the node more than its records did."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(
            fd, json.dumps({"seq": cursor.seq, "offset": cursor.offset, "segment": cursor.segment}).encode()
        )
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_batch(path: Path, offset: int, *, records: int, limit: int) -> list[bytes]:
    """Whole lines from ``offset``: at most ``records`` of them and about ``limit`` bytes."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, read in a thread
    except FileNotFoundError:
        return []
    with f:
        f.seek(offset)
        lines: list[bytes] = []
        size = 0
        for line in f:
            if not line.endswith(b"\n") or len(lines) >= records or (lines and size + len(line) > limit):
                break
            lines.append(line)
            size += len(line)
        return lines


@dataclass(frozen=True, slots=True)
class Read:
    at: Cursor
    """Where ``lines`` start: the cursor with the segment and offset of the first one."""
    lines: list[bytes]
    more: bool
    """Lines remain after these (a limit or the segment's end stopped the read): read on
    at once rather than wait for the next round."""


def read_next(log_file: Path, cursor: Cursor, *, records: int, limit: int) -> Read:
    """Where the record after ``cursor`` is (as a cursor: its segment and offset) and whole
    lines from there, within that segment (``read_batch``'s limits)."""
    base = segments.read_base(log_file)
    if base is not None and cursor.seq < base.seq:
        # A cursor from before the pruning (lost, or reset): what it points at was
        # acknowledged and pruned; go on from the first record that remains.
        cursor = Cursor(base.seq, 0, 0)
    nxt = cursor.seq + 1
    live = segments.live_segments(log_file, base.seq if base else 0)
    found = [s for s in live if s.start <= nxt]
    if not found:
        return Read(cursor, [], False)
    segment = found[-1]
    if segment.start == cursor.segment:
        offset = cursor.offset
    else:
        offset = _offset_of(segment.path, nxt - segment.start)
    at = Cursor(cursor.seq, offset, segment.start)
    lines = read_batch(segment.path, offset, records=records, limit=limit)
    full = len(lines) >= records or sum(map(len, lines)) > limit // 2
    return Read(at, lines, full or (bool(lines) and segment is not live[-1]))


def locate(log_file: Path, cursor: Cursor) -> Cursor:
    """``cursor`` as read from its file, checked against the log: its offset must be the end
    of record ``cursor.seq`` in segment ``cursor.segment``. A cursor file is not fsynced and
    is as open to editing as any file on disk; a position off that (beyond the segment's
    end, inside a line, after another record) had the shipper read nothing, half a line the
    control plane refuses, or the wrong records, at every round for good. Such a cursor
    keeps its seq (the control plane's ACK of the first batch corrects that) and has its
    offset found by counting lines, as after pruning (segment 0)."""
    if cursor.segment == 0:
        return cursor
    lines = cursor.seq - cursor.segment + 1
    try:
        if lines >= 0 and _offset_of(segments.segment_path(log_file, cursor.segment), lines) == cursor.offset:
            return cursor
    except FileNotFoundError:
        return cursor  # pruned since: read_next finds the record after it by counting anyway
    log.warning(
        "evidence cursor of %s: offset %d is not the end of seq %d in segment %d; finding it by counting",
        log_file.name,
        cursor.offset,
        cursor.seq,
        cursor.segment,
    )
    return Cursor(cursor.seq, 0, 0)


def _offset_of(path: Path, lines: int) -> int:
    """The byte offset after the first ``lines`` lines of ``path``."""
    offset = 0
    if lines:
        with open(path, "rb") as f:
            for n, line in enumerate(f, start=1):
                offset += len(line)
                if n == lines:
                    break
    return offset


def acknowledged_bytes(log_file: Path, cursor: Cursor) -> int:
    """Bytes of the remaining segments up to ``cursor`` (what the spool does not count)."""
    base = segments.read_base(log_file)
    live = segments.live_segments(log_file, base.seq if base else 0)
    total = 0
    for i, segment in enumerate(live):
        if i + 1 < len(live) and live[i + 1].start - 1 <= cursor.seq:
            total += segment.path.stat().st_size
        elif segment.start == cursor.segment:
            total += cursor.offset
    return total


def prune(log_file: Path, chain_id: str, acknowledged: int) -> int:
    """Delete the segments whose every record has a seq of at most ``acknowledged``, except
    the newest, after persisting the base that stands for them; the bytes deleted."""
    base = segments.read_base(log_file)
    live = segments.live_segments(log_file, base.seq if base else 0)
    doomed = [s for i, s in enumerate(live[:-1]) if live[i + 1].start - 1 <= acknowledged]
    if not doomed:
        return 0
    tree = base.tree() if base else merkle.Tree()
    last = b""
    for segment in doomed:
        if tree.size != segment.start - 1:
            raise ValueError(f"{segment.path}: starts at seq {segment.start}, not after seq {tree.size}")
        with open(segment.path, "rb") as f:
            for line in f:
                if line.endswith(b"\n"):
                    last = segments.line_hash(line)
                    tree.append(last)
    end = live[len(doomed)].start - 1
    if tree.size != end:
        raise ValueError(f"segments up to seq {end} hold {tree.size} records: not pruned")
    segments.write_base(log_file, segments.Base(chain_id, tree.size, last.hex(), tuple(tree.frontier())))
    deleted = 0
    for segment in doomed:
        deleted += segment.path.stat().st_size
        segment.path.unlink()
    segments.fsync_dir(log_file.parent)
    log.info("evidence %s: pruned %d acknowledged segment(s) up to seq %d", chain_id, len(doomed), end)
    return deleted


@dataclass(frozen=True, slots=True)
class ShipperStatus:
    connected: bool
    shipped_seq: int
    """Highest seq the control plane acknowledged (and the cursor holds)."""
    failures: int
    last_error: str
    proven_seq: int = 0
    """Size of the newest signed checkpoint the control plane took from this shipper (0
    until one is taken since it started)."""


class EvidenceShipper:
    """Keeps shipping one node's evidence log for as long as ``run`` runs."""

    def __init__(
        self,
        target: str,
        log_file: Path,
        *,
        node_id: str,
        tls: ClientTls,
        backoff: Callable[[int], float],
        interval: float = DEFAULT_INTERVAL,
        batch_records: int = BATCH_RECORDS,
        spool: Spool | None = None,
        durable_seq: Callable[[], int] | None = None,
        worker: str = "0",
    ) -> None:
        """``spool``: the node's log's spool, bounded from now on (the shipper keeps its
        acknowledged bytes); ``durable_seq``: the log's last fsynced seq, beyond which
        nothing is sent (None: whatever is in the file, for logs no process writes)."""
        self._target = target
        self._log_file = Path(log_file)
        self._node_id = node_id
        self._tls = tls
        self._backoff = backoff
        """Seconds to wait after ``n`` failures in a row (the node passes sync's full jitter)."""
        self._interval = interval
        self._durable_seq = durable_seq
        self._batch_records = batch_records
        self.chain_id = f"{node_id}/{worker}"
        self._cursor_file = cursor_path(self._log_file, self.chain_id)
        self._cursor = read_cursor(self._cursor_file)
        self._spool = spool if spool is not None else Spool()
        self._spool.bounded = True
        self._spool_counted = False
        self._connected = False
        self._failures = 0
        self._last_error = ""
        self._notes_file = checkpoint.checkpoints_path(self._log_file)
        self._notes_offset = 0
        self._notes: list[tuple[int, bytes]] = []
        """Signed checkpoints read but not shipped yet: (tree size, note)."""
        self._noted = 0
        """The largest checkpoint size the control plane has taken from this process."""
        self._progress = asyncio.Event()
        """Set whenever an ACK arrives or the stream goes down (what ``drain`` waits on)."""
        self._wake = asyncio.Event()
        """Cuts the wait between batches short (``drain``)."""
        self._draining = False

    @property
    def status(self) -> ShipperStatus:
        return ShipperStatus(self._connected, self._cursor.seq, self._failures, self._last_error, self._noted)

    async def run(self) -> None:
        """Ship until cancelled; never raises for control-plane trouble."""
        if not self._spool_counted:
            self._cursor = await asyncio.to_thread(locate, self._log_file, self._cursor)
            self._spool.acked = await asyncio.to_thread(acknowledged_bytes, self._log_file, self._cursor)
            self._spool_counted = True
        while True:
            try:
                await self._session()
            except grpc.aio.AioRpcError as exc:
                self._last_error = f"{exc.code().name}: {exc.details()}"
            except Exception as exc:
                # A dead shipper would let the spool grow unseen: log and keep trying.
                self._last_error = f"{type(exc).__name__}: {exc}"
                log.exception("evidence shipping to %s failed", self._target)
            finally:
                self._connected = False
                self._progress.set()
            self._failures += 1
            delay = self._backoff(self._failures)
            log.info(
                "evidence shipping to %s interrupted (%s); retrying in %.2fs from seq %d",
                self._target,
                self._last_error,
                delay,
                self._cursor.seq,
            )
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        outbox: asyncio.Queue[evidence_pb2.ShipBatch | None] = asyncio.Queue()

        async def requests() -> AsyncIterator[evidence_pb2.ShipBatch]:
            while (batch := await outbox.get()) is not None:
                yield batch

        async with aio_channel(self._target, self._tls) as channel:
            call = evidence_pb2_grpc.EvidenceServiceStub(channel).Ship(requests())
            try:
                # An empty batch first: the answer proves the stream is up (and tells the head).
                outbox.put_nowait(evidence_pb2.ShipBatch(chain_id=self.chain_id))
                await self._answer(call, [], self._cursor)
                self._connected = True
                self._failures = 0
                while True:
                    records = self._batch_records
                    if self._durable_seq is not None:
                        records = min(records, self._durable_seq() - self._cursor.seq)
                    read = (
                        await asyncio.to_thread(
                            read_next, self._log_file, self._cursor, records=records, limit=BATCH_BYTES
                        )
                        if records > 0
                        else Read(self._cursor, [], False)
                    )
                    at, lines = read.at, read.lines
                    notes = await asyncio.to_thread(self._checkpoints_upto, self._cursor.seq + len(lines))
                    if not lines and not notes:
                        await self._pause()
                        continue
                    outbox.put_nowait(
                        evidence_pb2.ShipBatch(
                            chain_id=self.chain_id, records=lines, checkpoints=[n.decode() for n in notes]
                        )
                    )
                    refused = await self._answer(call, lines, at)
                    if lines:
                        await self._prune()
                    if notes:
                        self._offered(notes[-1], refused)
                    if refused:
                        self._failures += 1
                        await asyncio.sleep(self._backoff(self._failures))
                    else:
                        self._failures = 0
                        if not read.more and not self._draining:
                            # The log had no more to send: let the next batch fill up.
                            await self._pause()
            finally:
                outbox.put_nowait(None)
                call.cancel()

    async def _pause(self) -> None:
        """Wait ``interval`` between batches, or less when ``drain`` asks for the rest."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._interval):
                await self._wake.wait()
        self._wake.clear()

    async def drain(self, head: int, signed: int, timeout: float) -> bool:
        """Ship the rest at once: True when the control plane holds records 1..``head`` and
        took the checkpoint of ``signed`` records (0: none to wait for), False when the stream
        is down or ``timeout`` seconds pass first (the rest stays on disk and ships when the
        node starts again). For a node that stops: its log is closed, so ``head`` is final."""
        self._draining = True
        self._wake.set()

        def drained() -> bool:
            return self._cursor.seq >= head and self._noted >= signed

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not drained() and self._connected:
                    self._progress.clear()
                    await self._progress.wait()
        return drained()

    def _checkpoints_upto(self, size: int) -> list[bytes]:
        """The newest signed checkpoint of at most ``size`` records the control plane has not
        taken yet (it covers every record before it: one per batch is enough), reading only
        what was appended to the checkpoints file since the last call."""
        try:
            with open(self._notes_file, "rb") as f:
                f.seek(self._notes_offset)
                data = f.read()
        except FileNotFoundError:
            data = b""
        notes, used = checkpoint.split(data)
        self._notes_offset += used
        for note in notes:
            try:
                self._notes.append((checkpoint.parse(note).size, note))
            except checkpoint.CheckpointInvalid as exc:
                log.error("evidence checkpoint not shipped, it does not parse: %s", exc)
        ready = [note for n, note in self._notes if self._noted < n <= size]
        return ready[-1:]

    def _offered(self, offered: bytes, refused: bool) -> None:
        """The control plane answered a batch carrying checkpoint ``offered``. Taken: it and
        older ones are done. Refused (the ACK says why; the control plane
        alarms): it is not offered again, or a checkpoint it will never take would hold back
        every batch after it; the next one the log signs covers the same records."""
        if refused:
            self._notes = [(n, note) for n, note in self._notes if note != offered]
            return
        self._noted = max(self._noted, checkpoint.parse(offered).size)
        self._notes = [(n, note) for n, note in self._notes if n > self._noted]
        self._progress.set()

    async def _answer(self, call: Any, lines: list[bytes], at: Cursor) -> bool:
        """Read the ACK of ``lines`` (read from ``at``) and move the cursor to it; True when
        it was refused."""
        # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancel that lands as the
        # ACK arrives, and a stopping node would then wait for this task forever.
        async with asyncio.timeout(ACK_TIMEOUT):
            ack = await call.read()
        if ack is grpc.aio.EOF:  # type: ignore[attr-defined]
            raise ConnectionError("the control plane ended the evidence stream")
        head = int(ack.head_seq)
        cursor = at
        if head > cursor.seq:
            offset = cursor.offset
            for line in lines[: head - cursor.seq]:
                offset += len(line)
            if head - cursor.seq > len(lines):
                # The control plane holds more than we ever sent from here (a lost cursor):
                # skip forward only as far as we can account for by bytes.
                head = cursor.seq + len(lines)
            self._spool.acked += offset - cursor.offset
            await self._save(Cursor(head, offset, cursor.segment))
        elif head < cursor.seq:
            # The store holds less than we were told before (restored from a backup):
            # resend from the start; it keeps what it has as duplicates.
            base = await asyncio.to_thread(segments.read_base, self._log_file)
            if base is None:
                log.warning(
                    "control plane holds %s up to seq %d only; resending from seq 1", self.chain_id, head
                )
                await self._save(Cursor())
            else:
                log.error(
                    "control plane holds %s up to seq %d only, but records up to seq %d were pruned here "
                    "after it acknowledged them; resending from seq %d",
                    self.chain_id,
                    head,
                    base.seq,
                    base.seq + 1,
                )
                await self._save(Cursor(base.seq, 0, 0))
            self._spool.acked = await asyncio.to_thread(acknowledged_bytes, self._log_file, self._cursor)
        self._spool.check()
        self._progress.set()
        if ack.HasField("error"):
            self._last_error = f"{ack.error.code}: {ack.error.message}"
            log.error("evidence batch refused by the control plane: %s", self._last_error)
            return True
        return False

    async def _prune(self) -> None:
        try:
            deleted = await asyncio.to_thread(prune, self._log_file, self.chain_id, self._cursor.seq)
        except (OSError, ValueError) as exc:
            # Nothing is lost by not pruning: the spool keeps growing and says so.
            log.error("evidence %s: acknowledged segments not pruned: %s", self.chain_id, exc)
            return
        self._spool.pruned(deleted)

    async def _save(self, cursor: Cursor) -> None:
        await asyncio.to_thread(write_cursor, self._cursor_file, cursor)
        self._cursor = cursor
