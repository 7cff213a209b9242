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

On start the chain is read back, every remaining record checked, and a torn last line cut
off (``dataplane.evidence.recovery``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.hazmat.primitives.asymmetric import ec

from dataplane.evidence import checkpoint, merkle, segments
from dataplane.evidence.records import (
    GENESIS_HASH,
    ChainHead,
    encode_record,
    stored_line,
)
from dataplane.evidence.recovery import recover
from dataplane.evidence.spool import Spool
from dataplane.evidence.writer_lock import WriterLock
from dataplane.random_ids import token_hex

log = logging.getLogger("signalbox.dataplane.evidence")

DEFAULT_WORKER = "0"
DEFAULT_CHECKPOINT_RECORDS = 1000
DEFAULT_CHECKPOINT_INTERVAL = 1.0

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
        self._torn = False
        """A record was written in part and not cut back yet: the next append cuts it first."""
        self.failing = ""
        """Why the last record could not be written ("" once a record is written again)."""
        self.failed_at = 0.0
        """When (``time.monotonic``) a record last could not be written."""
        self.broken = ""
        """Why the log takes no more records until the node restarts ("" while it does): an
        fsync failed (``_sync_round``)."""
        self.on_failing: Callable[[], None] | None = None
        """Called (on the event loop) when a record could not be written, and when one is
        written again after that: the node's readiness follows (``dataplane.readiness``)."""
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
            state = await asyncio.to_thread(recover, self.path, self.checkpoints_path, self.chain_id)
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
        record_id = record_id or token_hex(16)
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
        try:
            if self.broken:
                raise OSError(errno.EIO, self.broken)
            if self._torn:
                self._cut_back(refuse=False)
            if self._segment_size and self._segment_size + len(line) > self._segment_bytes:
                self._roll(seq)
            if self._file.write(line) != len(line):
                self._torn = True
                self._cut_back(refuse=True)
        except OSError as exc:
            self.failing, self.failed_at = exc.strerror or str(exc), time.monotonic()
            if self.on_failing is not None:
                self.on_failing()
            raise
        if self.failing:
            self.failing = ""
            if self.on_failing is not None:
                self.on_failing()
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

    def _cut_back(self, *, refuse: bool) -> None:
        """A record the OS took only in part (the disk or the file size limit filled up
        mid-record): cut the segment back to its last whole record, and refuse that record.
        A torn line left there would sit mid-chain once the next record is written after it,
        so until the cut succeeds no record is written (``_torn``)."""
        assert self._file is not None
        try:
            self._file.truncate(self._segment_size)
        except OSError as exc:
            raise OSError(
                exc.errno, f"a record written in part could not be cut back: {exc.strerror}"
            ) from exc
        self._torn = False
        if refuse:
            raise OSError(errno.ENOSPC, "the record was written only in part (disk full?); cut back")

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
        newest segment; False when any of it failed. Runs in a thread; rounds never overlap.

        A failed fsync breaks the log for good (``broken``), as PostgreSQL panics on one: the
        kernel may have dropped the pages it could not write and reports the error once, so a
        later fsync that succeeds proves nothing about them. Syncing on would move the durable
        seq (the shipper sends up to it) and sign checkpoints over records that may never reach
        the disk. Broken, the log writes, ships and signs nothing more; the node refuses every
        request and says it is not ready, and its restart checks every record on disk."""
        with self._sync_lock:
            if self.broken:
                return False
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
                if exc.errno == errno.EINVAL:
                    # A file that cannot be synced at all (a device, say): nothing was dropped,
                    # and its writes fail on their own if they fail.
                    with self._files_lock:
                        self._new_entries = self._new_entries or new_entries
                    log.error("evidence log %s: cannot be fsynced: %s", self.path, exc)
                    return False
                self.broken = f"fsync failed ({exc.strerror or exc}): restart the node"
                self.failing, self.failed_at = self.broken, time.monotonic()
                log.error(
                    "evidence log %s: fsync failed (%s): records after seq %d may not be on disk; "
                    "the log takes, ships and signs no more records and the node serves no "
                    "request until it is restarted (its start checks every record on disk)",
                    self.path,
                    exc,
                    self._durable_seq,
                )
                if self._loop is not None and self.on_failing is not None:
                    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                        self._loop.call_soon_threadsafe(self.on_failing)
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
