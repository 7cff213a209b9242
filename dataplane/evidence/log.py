"""The node's append-only, hash-chained evidence log.

One JSON object per line in ``<data_dir>/evidence/<node_id>.jsonl``. Each record
carries a gap-free per-node ``seq``, the ``prev_hash`` of the record before it and
its own ``hash``: SHA-256 over the canonical JSON (sorted keys, no spaces) of the
record without its ``hash`` field. Changing, removing or reordering any record
breaks the chain, which ``verify_chain`` detects.

Durability window: ``append`` writes and flushes each record to the operating
system before it returns, so a record survives the process crashing. ``fsync``
runs in a background task at most every ``fsync_interval`` seconds (default 50 ms)
off the event loop, so a power loss can lose at most that window; ``aclose``
syncs what is left. On start the tail is read back: the sequence and chain
continue from the last complete record, and a torn last line (a crash in the
middle of a write) is cut off.
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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from dataplane.errors import EvidenceChainBroken

log = logging.getLogger("signalbox.dataplane.evidence")

GENESIS_HASH = "0" * 64
"""``prev_hash`` of a node's first record."""

_TAIL_CHUNK = 64 * 1024
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True, slots=True)
class ChainHead:
    seq: int
    hash: str


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``record`` without its ``hash`` field."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(_canonical(body)).hexdigest()


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def log_path(data_dir: Path, node_id: str) -> Path:
    """Where the evidence of ``node_id`` lives under ``data_dir``."""
    return Path(data_dir) / "evidence" / f"{_SAFE_NAME.sub('_', node_id)}.jsonl"


class EvidenceLog:
    """Appends records for one node; single writer, used from the event loop only."""

    def __init__(self, path: Path, node_id: str, *, fsync_interval: float = 0.05) -> None:
        self.path = Path(path)
        self.node_id = node_id
        self._fsync_interval = fsync_interval
        self._file: BinaryIO | None = None
        self._head = ChainHead(0, GENESIS_HASH)
        self._dirty = asyncio.Event()
        self._syncer: asyncio.Task[None] | None = None

    @property
    def head(self) -> ChainHead:
        """Sequence number and hash of the last record written."""
        return self._head

    async def start(self) -> None:
        """Open the log, recover the chain head from its tail, start the fsync task."""
        # Evidence names tenants, models and callers: 0600 in a 0700 directory.
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path.parent.chmod(0o700)
        self._head = await asyncio.to_thread(_recover_tail, self.path)
        # Unbuffered: each record goes to the OS in one write() call, never split.
        self._file = await asyncio.to_thread(_open_private_append, self.path)
        self._syncer = asyncio.get_running_loop().create_task(self._sync_loop())

    def append(self, fields: Mapping[str, Any]) -> str:
        """Write one record made of ``fields`` plus the chain fields; return its record id."""
        if self._file is None:
            # ValueError, like a write to a closed file: callers handle both the same way.
            raise ValueError("evidence log is not open")
        seq = self._head.seq + 1
        record_id = secrets.token_hex(16)
        record: dict[str, Any] = {
            "record_id": record_id,
            "node_id": self.node_id,
            "seq": seq,
            "prev_hash": self._head.hash,
            **fields,
        }
        body = _canonical(record)
        digest = hashlib.sha256(body).hexdigest()
        # The stored line is the hashed body with "hash" appended last; verification
        # drops "hash" and re-canonicalizes, so the key order on disk does not matter.
        self._file.write(b'%b,"hash":"%b"}\n' % (body[:-1], digest.encode()))
        self._head = ChainHead(seq, digest)
        self._dirty.set()
        return record_id

    async def _sync_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self._fsync()
            await asyncio.sleep(self._fsync_interval)

    async def _fsync(self) -> None:
        if self._file is not None:
            try:
                await asyncio.to_thread(os.fsync, self._file.fileno())
            except OSError as exc:
                # Records are already with the OS; keep the loop alive and say so.
                log.error("evidence log %s: fsync failed: %s", self.path, exc)

    async def aclose(self) -> None:
        """Stop the background task, sync and close the file."""
        if self._syncer is not None:
            self._syncer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._syncer
            self._syncer = None
        if self._file is not None:
            await self._fsync()
            self._file.close()
            self._file = None

    async def __aenter__(self) -> EvidenceLog:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _open_private_append(path: Path) -> BinaryIO:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)  # a log created before files were private
    return os.fdopen(fd, "ab", buffering=0)


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Every complete record in the file, in order."""
    with open(path, "rb") as f:
        for line in f:
            if line.endswith(b"\n"):
                yield json.loads(line)


def verify_chain(path: Path) -> ChainHead:
    """Check sequence, links and hashes of the whole file; return its head."""
    head = ChainHead(0, GENESIS_HASH)
    for n, record in enumerate(read_records(path), start=1):
        if record.get("seq") != head.seq + 1:
            raise EvidenceChainBroken(f"line {n}: seq {record.get('seq')} follows {head.seq}")
        if record.get("prev_hash") != head.hash:
            raise EvidenceChainBroken(f"line {n}: prev_hash does not match the record before")
        if record_hash(record) != record.get("hash"):
            raise EvidenceChainBroken(f"line {n}: hash does not match the record's content")
        head = ChainHead(record["seq"], record["hash"])
    return head


def _recover_tail(path: Path) -> ChainHead:
    """The last complete record's head; a torn final line is truncated away."""
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
        if torn:
            log.warning("evidence log %s: cutting a torn last record (%d bytes)", path, len(torn))
            f.truncate(size - len(torn))
            f.flush()
            os.fsync(f.fileno())
        if not complete:
            return ChainHead(0, GENESIS_HASH)
        try:
            last = json.loads(complete[-1])
        except ValueError as exc:
            raise EvidenceChainBroken(f"{path}: last record is not JSON: {exc}") from exc
        if not isinstance(last, dict) or record_hash(last) != last.get("hash"):
            raise EvidenceChainBroken(f"{path}: last record's hash does not match its content")
        return ChainHead(int(last["seq"]), str(last["hash"]))
