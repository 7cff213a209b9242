"""The node's append-only, hash-chained evidence log: one chain per worker, in segment files.

**Chains.** A chain is the log of one worker process of one node; its id is
``<node_id>/<worker>`` (``chain_id``). The node runs one worker today (``"0"``), and each
future worker keeps its own gap-free chain. A chain lives in
``<data_dir>/evidence/<node_id>@<worker>.jsonl`` (characters outside ``[A-Za-z0-9._-]``
of either part replaced by ``_``; the ``chain_id`` inside the records is authoritative,
the file name is only where to look), with its signed checkpoints next to it in
``<chain file>.checkpoints`` (format in ``dataplane.evidence.checkpoint``). That file is
the chain's first segment: a new segment starts when the newest would grow past
``segment_bytes`` (``--evidence-segment-bytes``), and acknowledged segments are pruned
behind a base file; ``dataplane.evidence.segments`` has the names and the base.

**Records.** One JSON object per line, hash-chained; their bytes, hashing and reading back
are in ``dataplane.evidence.records``.

The chain is also an RFC 9162 Merkle tree (``dataplane.evidence.merkle``) whose leaves are
the records' 32-byte hashes (hex-decoded ``hash``) in ``seq`` order: the record with
``seq`` s is leaf ``s - 1``.

Logs written before records carried ``chain_id`` (``<node_id>.jsonl``) are not read by
the node (it starts the new chain file next to them) and are refused by the verifier,
which names the first record without a ``chain_id``: they have no checkpoints, so they
cannot be proven the way a chain can. A chain file whose last record belongs to another
chain is refused at start.

**Checkpoints.** With a signing key, the log signs a checkpoint of its tree every
``checkpoint_records`` records or ``checkpoint_interval`` seconds (only when there are
new records), and once more at ``aclose``. This happens in a background task (the log
is fsynced first, so a checkpoint never covers a record that is not on disk; ECDSA
signing and the checkpoint file's fsync run in a worker thread), never on the request's
path: ``append`` only adds one leaf to the in-memory tree. On start the tree is rebuilt
from the file and the last checkpoint is checked against it (its root must equal the
tree of that many records; a torn last checkpoint is cut off).

**Durability: the answer carries "written", not "synced" (option b).** ``append``
writes and flushes each record to the operating system in one ``write()`` before it
returns, so the record survives the *process* crashing (SIGKILL, OOM, a bug). ``fsync``
runs in one long-lived thread at most every ``fsync_interval`` seconds (default 50 ms),
so a *machine* crash (power loss, kernel panic) can lose at most that window; ``aclose``
syncs what is left. The first record after the thread slept wakes it once the request's
step is over (a flag check per record, a ``call_soon`` and an ``Event.set`` per round), and
the thread tells the log what it synced by itself: no executor hand-off, future or loop
wake-up per round (they cost the event loop a few % of its time under load, most of it
waiting for the GIL in ``submit``). Callers see it in the trailing metadata of every
answer (``dataplane.api.status``): ``signalbox-evidence-id: <record_id>`` and
``signalbox-evidence: written`` (written to the OS; fsynced within the window).

Why not (a), group commit (each answer waits for the fsync of its batch)? The target
is under 100 us added per request at p50; measured on this machine (2 shared cores, a
virtual disk, 1.5 KB records; ``bench/evidence_bench.py``, figures in bench/README.md)::

    append() (canonical JSON, SHA-256, write(), Merkle leaf)   p50   30 us   p99  116 us
    write() to the OS                                          p50  0.4 us   p99   29 us
    write() + fdatasync()                                      p50  241 us   p99  588 us
    write() + fsync()                                          p50  198 us   p99 1398 us

A group commit makes every answer wait for at least one fsync (and on average half a
batching window more): twice the whole budget at p50 and over a millisecond at p99,
whatever the batching. What (b) gives up is bounded and documented: records of answers
in the last ``fsync_interval`` before a power loss (never before a process crash). A
checkpoint is only ever signed over fsynced records, so no signed statement can name a
record that was lost.

On start the tail is read back: the sequence and chain continue from the last
complete record of the newest segment, and a torn last line (a crash in the middle of a
write) is cut off. The tree is rebuilt from the base (the compact range of what was
pruned, if anything was) and every remaining segment, each of which must start where the
one before ended. Every remaining record is checked as the verifier checks it (seq, the link
to the record before, its own hash, its chain): a record edited, replaced, dropped or moved
in the middle refuses the start, naming the file and line, rather than have the node append
to, and sign checkpoints over, a chain that no longer verifies.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgspec
from cryptography.hazmat.primitives.asymmetric import ec

from dataplane.errors import EvidenceChainBroken
from dataplane.evidence import checkpoint, merkle, segments
from dataplane.evidence.records import (
    GENESIS_HASH,
    ChainHead,
    encode_record,
    hash_of_line,
    stored_line,
)
from dataplane.evidence.spool import Spool
from dataplane.evidence.writer_lock import WriterLock

log = logging.getLogger("signalbox.dataplane.evidence")

DEFAULT_WORKER = "0"
DEFAULT_CHECKPOINT_RECORDS = 1000
DEFAULT_CHECKPOINT_INTERVAL = 1.0

_TAIL_CHUNK = 64 * 1024
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def chain_id(node_id: str, worker: str = DEFAULT_WORKER) -> str:
    """``<node_id>/<worker>``: the id of one worker's chain."""
    return f"{node_id}/{worker}"


def log_path(data_dir: Path, node_id: str, worker: str = DEFAULT_WORKER) -> Path:
    """Where the chain of ``node_id``'s ``worker`` lives under ``data_dir``."""
    return Path(data_dir) / "evidence" / f"{_SAFE_NAME.sub('_', node_id)}@{_SAFE_NAME.sub('_', worker)}.jsonl"


def chain_files(data_dir: Path) -> list[Path]:
    """Every chain (its first segment's name, ``*.jsonl``) in a node's evidence directory, sorted."""
    return segments.chain_names(Path(data_dir) / "evidence")


class EvidenceLog:
    """Appends records to one chain; single writer, used from the event loop only.

    ``signer``: the node's key; with it the log signs checkpoints (see the module
    docstring), without it (tests of the log alone) it signs none. ``spool``: told the
    bytes of every record written (``dataplane.evidence.spool``)."""

    def __init__(
        self,
        path: Path,
        node_id: str,
        *,
        worker: str = DEFAULT_WORKER,
        fsync_interval: float = 0.05,
        signer: ec.EllipticCurvePrivateKey | None = None,
        checkpoint_records: int = DEFAULT_CHECKPOINT_RECORDS,
        checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL,
        segment_bytes: int = segments.DEFAULT_SEGMENT_BYTES,
        spool: Spool | None = None,
    ) -> None:
        if checkpoint_records < 1 or not checkpoint_interval > 0:
            raise ValueError("checkpoints need a positive record count and interval")
        if segment_bytes < 1:
            raise ValueError("segments need a positive size")
        self.path = Path(path)
        self.node_id = node_id
        self.chain_id = chain_id(node_id, worker)
        self.checkpoints_path = checkpoint.checkpoints_path(self.path)
        self._fsync_interval = fsync_interval
        self._signer = signer
        self._checkpoint_records = checkpoint_records
        self._checkpoint_interval = checkpoint_interval
        self._file: BinaryIO | None = None
        self._segment_bytes = segment_bytes
        self._segment_start = 1
        self._segment_size = 0
        self._sealed: list[BinaryIO] = []
        """Segments rolled over from whose fsync (and close) is still due."""
        self._new_entries = False
        """A segment file was created since the directory was last fsynced."""
        self._writer_lock = WriterLock(path)
        self._sync_lock = threading.Lock()
        """Held by the thread syncing: rounds (the sync thread's, a checkpoint's) never overlap."""
        self._files_lock = threading.Lock()
        """Guards ``_file``, ``_sealed`` and ``_new_entries`` between the event loop (a segment
        rolling over) and a sync round taking them; never held across I/O."""
        self._unsynced = False
        """A record was written since the sync thread last took the head (event loop sets it)."""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._sync_thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.spool = spool if spool is not None else Spool()
        self._head = ChainHead(0, GENESIS_HASH)
        self._durable_seq = 0
        self._tree = merkle.Tree()
        self._signed_size = 0
        self._checkpoint_due = asyncio.Event()
        self._checkpointer: asyncio.Task[None] | None = None
        self._checkpoint_lock = asyncio.Lock()
        self.checkpoints_signed = 0
        """Checkpoints this log signed since it started."""
        self.checkpoint_rounds = 0
        """Times the checkpoint task woke up (signing or finding nothing new)."""

    @property
    def head(self) -> ChainHead:
        """Sequence number and hash of the last record written."""
        return self._head

    @property
    def durable_seq(self) -> int:
        """The last seq known to be on disk (fsynced): the shipper sends nothing after it, so
        the control plane never holds a record a power loss could take from the node."""
        return self._durable_seq

    @property
    def signed_size(self) -> int:
        """The tree size of the last signed checkpoint (0: none yet)."""
        return self._signed_size

    async def start(self) -> None:
        """Open the log, recover the chain head and tree, start the fsync and checkpoint tasks."""
        # Evidence names tenants, models and callers: 0600 in a 0700 directory.
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path.parent.chmod(0o700)
        self._loop = asyncio.get_running_loop()
        self._writer_lock.acquire()  # ChainBusy when another process writes this chain
        try:
            state = await asyncio.to_thread(_recover, self.path, self.checkpoints_path, self.chain_id)
        except BaseException:
            self._writer_lock.release()
            raise
        self._head, self._tree, self._signed_size = state.head, state.tree, state.signed_size
        self._segment_start, self._segment_size = state.segment.start, state.segment_size
        self.spool.written = state.live_bytes
        # Unbuffered: each record goes to the OS in one write() call, never split.
        self._file = await asyncio.to_thread(_open_private_append, state.segment.path)
        # What a crashed process left may be in the page cache only: on disk before it ships.
        self._new_entries = True
        await self._fsync()
        self._stop.clear()
        self._unsynced = False
        self._sync_thread = threading.Thread(
            target=self._sync_loop, name=f"evidence-fsync {self.chain_id}", daemon=True
        )
        self._sync_thread.start()
        loop = asyncio.get_running_loop()
        if self._signer is not None:
            self._checkpointer = loop.create_task(self._checkpoint_loop())

    def append(self, fields: Mapping[str, Any], record_id: str | None = None) -> str:
        """Write one record made of ``fields`` plus the chain fields; return its record id
        (``record_id`` when given: a front door that names the record before it is written)."""
        if self._file is None:
            # ValueError, like a write to a closed file: callers handle both the same way.
            raise ValueError("evidence log is not open")
        seq = self._head.seq + 1
        record_id = record_id or secrets.token_hex(16)
        record: dict[str, Any] = {
            "record_id": record_id,
            "chain_id": self.chain_id,
            "node_id": self.node_id,
            "seq": seq,
            "prev_hash": self._head.hash,
            **fields,
        }
        body = encode_record(record)
        hashed = hashlib.sha256(body)
        digest = hashed.hexdigest()
        # The stored line is the hashed body with "hash" appended last (``hash_of_line``).
        line = stored_line(body, digest)
        if self._segment_size and self._segment_size + len(line) > self._segment_bytes:
            self._roll(seq)
        self._file.write(line)
        self._segment_size += len(line)
        self.spool.written += len(line)
        self._head = ChainHead(seq, digest)
        self._tree.append(hashed.digest())
        if not self._unsynced:
            self._unsynced = True
            # Once the request's step is over (its answer written), not now: a thread woken
            # here takes the GIL in the middle of the request and delays its answer.
            if self._loop is not None:
                self._loop.call_soon(self._wake.set)
        if self._tree.size - self._signed_size >= self._checkpoint_records:
            self._checkpoint_due.set()
        return record_id

    def _roll(self, seq: int) -> None:
        """Start the segment of ``seq``; the full one is fsynced and closed by the next sync round."""
        assert self._file is not None
        path = segments.segment_path(self.path, seq)
        # One open() on the request's path, once per segment_bytes: the new file must exist
        # before this record is written to it.
        new = _open_private_append(path)
        with self._files_lock:
            self._sealed.append(self._file)
            self._file = new
            self._new_entries = True
        self._segment_start, self._segment_size = seq, 0
        log.info("evidence log %s: segment %s started at seq %d", self.chain_id, path.name, seq)

    def _sync_loop(self) -> None:
        """The sync thread: wait for a record, sync, sleep ``fsync_interval``; until ``_stop``."""
        while True:
            self._wake.wait()
            if self._stop.is_set():
                return
            self._wake.clear()
            self._unsynced = False  # before the round: a record written during it wakes the next
            self._sync_round()
            if self._stop.wait(self._fsync_interval):
                return

    async def _fsync(self) -> bool:
        """One sync round now, in a worker thread (start, checkpoints, close)."""
        return await asyncio.to_thread(self._sync_round)

    def _sync_round(self) -> bool:
        """Sync the segments rolled over from (then close them), new directory entries and the
        newest segment; False when any of it failed (retried on the next round). Runs in a
        thread; rounds never overlap."""
        with self._sync_lock:
            with self._files_lock:
                current = self._file
                if current is None:
                    return True
                # The sealed files stay listed until closed: aclose closes whatever is left.
                sealed = list(self._sealed)
                new_entries, self._new_entries = self._new_entries, False
                # Every record up to this seq is with the OS already: on disk after the sync.
                seq = self._head.seq
            try:
                _sync_files(sealed, self.path.parent if new_entries else None, current)
            except OSError as exc:
                # Records are already with the OS; keep syncing and say so.
                with self._files_lock:
                    self._new_entries = self._new_entries or new_entries
                log.error("evidence log %s: fsync failed: %s", self.path, exc)
                return False
            finally:
                with self._files_lock:
                    self._sealed = [f for f in self._sealed if not f.closed]
            self._durable_seq = max(self._durable_seq, seq)
            return True

    async def _stop_sync_thread(self) -> None:
        thread, self._sync_thread = self._sync_thread, None
        if thread is not None:
            self._stop.set()
            self._wake.set()
            await asyncio.to_thread(thread.join)

    async def _checkpoint_loop(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that lands
            # as the event fires, and aclose would then wait for this task forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._checkpoint_interval):
                    await self._checkpoint_due.wait()
            self._checkpoint_due.clear()
            try:
                await self.checkpoint()
                self.checkpoint_rounds += 1
            except OSError as exc:
                # The records are safe; the next round tries again with a larger tree.
                log.error("evidence log %s: checkpoint not written: %s", self.path, exc)

    async def checkpoint(self) -> bool:
        """Sign and store a checkpoint of every record written so far, if there are new
        ones and a key; True when one was written."""
        async with self._checkpoint_lock:
            if self._signer is None or self._tree.size <= self._signed_size:
                return False
            # Taken before the fsync: every record in (size, root) is already with the OS,
            # so the fsync below puts all of them on disk before they are signed for.
            size, root = self._tree.size, self._tree.root()
            if not await self._fsync():
                return False
            stored = asyncio.ensure_future(
                asyncio.to_thread(
                    _sign_and_store, self._signer, self.checkpoints_path, self.chain_id, size, root
                )
            )
            try:
                await asyncio.shield(stored)
            finally:
                # Cancelled (aclose stops the checkpoint task): the thread writes on regardless.
                # The lock is held until it has, so no later, larger checkpoint lands in the
                # file before this one (a verifier refuses sizes that shrink).
                while not stored.done():
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait((stored,))
                if not stored.cancelled() and stored.exception() is None:
                    self._signed_size = size
                    self.checkpoints_signed += 1
            return True

    async def aclose(self) -> None:
        """Stop the sync thread and the checkpoint task, sign a last checkpoint, sync and close the file."""
        await self._stop_sync_thread()
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpointer
        self._checkpointer = None
        if self._file is not None:
            try:
                await self.checkpoint()
            except OSError as exc:
                log.error("evidence log %s: last checkpoint not written: %s", self.path, exc)
            await self._fsync()
            with self._files_lock:
                for f in self._sealed:
                    f.close()
                self._sealed = []
                self._file.close()
                self._file = None
        self._writer_lock.release()

    async def __aenter__(self) -> EvidenceLog:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _sign_and_store(key: ec.EllipticCurvePrivateKey, path: Path, chain: str, size: int, root: bytes) -> None:
    note = checkpoint.sign(key, chain, size, root, int(time.time()))
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, note + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_files(sealed: list[BinaryIO], directory: Path | None, current: BinaryIO) -> None:
    for f in sealed:
        if not f.closed:  # else a round before this one synced and closed it
            os.fsync(f.fileno())
            f.close()
    if directory is not None:
        segments.fsync_dir(directory)
    os.fsync(current.fileno())


def _open_private_append(path: Path) -> BinaryIO:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)  # a log created before files were private
    return os.fdopen(fd, "ab", buffering=0)


@dataclass(frozen=True, slots=True)
class _Recovered:
    head: ChainHead
    tree: merkle.Tree
    signed_size: int
    segment: segments.Segment
    """The newest segment, where writing continues."""
    segment_size: int
    live_bytes: int
    """Bytes of every remaining segment."""


def _recover(path: Path, checkpoints: Path, chain: str) -> _Recovered:
    """The chain head (a torn final line of the newest segment cut away), the Merkle tree
    continued from the base over every remaining segment (each record checked to continue
    the chain: ``_walk_segment``), and the size of the last complete checkpoint (a torn last
    one cut away), which must match the tree."""
    base = segments.read_base(path)
    if base is not None and base.chain_id != chain:
        raise EvidenceChainBroken(f"{segments.base_path(path)}: of chain {base.chain_id!r}, not {chain!r}")
    base_seq = base.seq if base else 0
    live = segments.live_segments(path, base_seq)
    for leftover in segments.all_segments(path):
        if leftover not in live:
            # Pruned by the base already; the deletion was interrupted.
            log.warning(
                "evidence log %s: deleting %s, pruned before the last stop", chain, leftover.path.name
            )
            leftover.path.unlink()
    if not live:
        live = [segments.Segment(base_seq + 1, segments.segment_path(path, base_seq + 1))]
    head = ChainHead(base.seq, base.hash) if base else ChainHead(0, GENESIS_HASH)
    # Writes only ever go to the newest segment: only it can end in a torn line.
    for segment in reversed(live):
        tail = _recover_tail(segment.path, chain, cut=segment is live[-1])
        if tail.seq:
            head = tail
            break
    tree = base.tree() if base else merkle.Tree()
    # Every remaining record is checked as the verifier checks it (seq, link, own hash, chain)
    # before the log extends the chain: only the last record and the last checkpoint say
    # nothing of a record in the middle edited, replaced or moved after the last checkpoint,
    # and a node that appended and signed over such a chain would fork it under its key.
    walked = ChainHead(base.seq, base.hash) if base else ChainHead(0, GENESIS_HASH)
    live_bytes = 0
    for segment in live:
        if tree.size != segment.start - 1:
            raise EvidenceChainBroken(
                f"{segment.path}: starts at seq {segment.start} but the records before end at seq {tree.size}"
            )
        try:
            size = segment.path.stat().st_size
        except FileNotFoundError:
            continue  # the newest segment of a new chain, or one whose creation was lost
        if not size:
            continue  # (not read: a device such as /dev/full reads forever)
        walked = _walk_segment(segment.path, walked, chain, tree)
        live_bytes += size
    if tree.size != head.seq:
        raise EvidenceChainBroken(f"{path}: {tree.size} records but the last one has seq {head.seq}")
    newest = live[-1]
    try:
        newest_size = newest.path.stat().st_size
    except FileNotFoundError:
        newest_size = 0
    signed = _recover_checkpoints(checkpoints, path, tree)
    return _Recovered(head, tree, signed, newest, newest_size, live_bytes)


class _Link(msgspec.Struct, gc=False):
    """The members of a record line that place it in the chain (the others are skipped)."""

    seq: int
    prev_hash: str
    hash: str
    chain_id: str | None = None


_read_link = msgspec.json.Decoder(_Link).decode


def _walk_segment(path: Path, before: ChainHead, chain: str, tree: merkle.Tree) -> ChainHead:
    """Check every record line of segment ``path`` to follow the one before it (``before``:
    the head the segments before it end at), add each to ``tree``; the head after the last.
    ``EvidenceChainBroken`` naming the file, the line and the rule otherwise."""
    seq, digest = before.seq, before.hash
    append, leaf = tree.append, bytes.fromhex
    with open(path, "rb") as f:
        for n, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                raise EvidenceChainBroken(f"{path}: ends in a torn record but is not the newest segment")
            now: object
            prev: object
            claimed: object
            of_chain: object
            try:
                # msgspec reads the four members without building the rest: this runs for
                # every record of every remaining segment at each start.
                link = _read_link(line)
                now, prev, claimed, of_chain = link.seq, link.prev_hash, link.hash, link.chain_id
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
                # (RecursionError: msgspec has no depth limit of its own.)
                record = segments.json_object(line, f"{path}: line {n}")  # names what is not JSON
                now, prev, claimed, of_chain = (
                    record.get(k) for k in ("seq", "prev_hash", "hash", "chain_id")
                )
            if type(now) is not int or now != seq + 1:
                raise EvidenceChainBroken(
                    f"{path}: line {n}: seq {repr(now)[:40]} follows seq {seq} (a record missing, inserted or moved)"
                )
            if prev != digest:
                raise EvidenceChainBroken(f"{path}: line {n}: prev_hash does not match the hash of seq {seq}")
            computed = hash_of_line(line)
            if computed is None or computed != claimed:
                raise EvidenceChainBroken(f"{path}: line {n}: hash does not match the record's content")
            if of_chain != chain:
                raise EvidenceChainBroken(f"{path}: line {n}: of chain {repr(of_chain)[:200]}, not {chain!r}")
            seq, digest = now, computed
            append(leaf(computed))
    return ChainHead(seq, digest)


def _recover_checkpoints(path: Path, log_file: Path, tree: merkle.Tree) -> int:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    notes, complete = checkpoint.split(data)
    if complete < len(data):
        log.warning(
            "evidence checkpoints %s: cutting a torn last checkpoint (%d bytes)", path, len(data) - complete
        )
        with open(path, "r+b") as f:
            f.truncate(complete)
            os.fsync(f.fileno())
    if not notes:
        return 0
    try:
        last = checkpoint.parse(notes[-1])
    except checkpoint.CheckpointInvalid as exc:
        raise EvidenceChainBroken(f"{path}: checkpoint {len(notes)}: {exc}") from exc
    if last.size > tree.size:
        raise EvidenceChainBroken(
            f"{path}: checkpoint {len(notes)} covers {last.size} records but {log_file} has {tree.size}"
        )
    if last.size == tree.size and last.root != tree.root():
        raise EvidenceChainBroken(f"{path}: checkpoint {len(notes)}: root does not match the log's records")
    return last.size


def _recover_tail(path: Path, chain: str, *, cut: bool = True) -> ChainHead:
    """The last complete record's head; a torn final line is truncated away (with ``cut``;
    without, it is an error)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return ChainHead(0, GENESIS_HASH)
    if size == 0:
        return ChainHead(0, GENESIS_HASH)
    with open(path, "r+b") as f:
        start = max(0, size - _TAIL_CHUNK)
        while True:
            f.seek(start)
            data = f.read(size - start)
            lines = data.split(b"\n")
            # Complete lines are the ones followed by "\n"; the last element is the remainder.
            torn = lines[-1]
            complete = [line for line in lines[:-1] if line]
            if start > 0 and len(complete) <= 1:
                # The chunk may begin mid-line: read further back for a whole record.
                start = max(0, start - _TAIL_CHUNK)
                continue
            break
        if torn and not cut:
            raise EvidenceChainBroken(f"{path}: ends in a torn record but is not the newest segment")
        if torn:
            log.warning("evidence log %s: cutting a torn last record (%d bytes)", path, len(torn))
            f.truncate(size - len(torn))
            f.flush()
            os.fsync(f.fileno())
        if not complete:
            return ChainHead(0, GENESIS_HASH)
        try:
            last = json.loads(complete[-1])
        except RecursionError as exc:  # no depth limit but the stack's: not a ValueError
            raise EvidenceChainBroken(f"{path}: last record is not JSON: nested too deep") from exc
        except ValueError as exc:
            raise EvidenceChainBroken(f"{path}: last record is not JSON: {exc}") from exc
        digest = hash_of_line(complete[-1] + b"\n")
        # None on both sides (a line without its hash member) is no match: KeyError below, else.
        if digest is None or not isinstance(last, dict) or digest != last.get("hash"):
            raise EvidenceChainBroken(f"{path}: last record's hash does not match its content")
        if last.get("chain_id") != chain:
            raise EvidenceChainBroken(
                f"{path}: last record is of chain {last.get('chain_id')!r}, not {chain!r} "
                "(a log from before records carried chain_id, or another chain's file): move it away"
            )
        seq = last.get("seq")
        # Checked, not int()-ed: a missing seq was a KeyError the node's start does not catch
        # (a traceback, not a refusal), and "6" or 6.0 are not what the log writes.
        if type(seq) is not int or seq < 1:
            raise EvidenceChainBroken(f"{path}: last record's seq {repr(seq)[:40]} is not a positive integer")
        return ChainHead(seq, digest)
