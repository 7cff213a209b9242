"""Air-gapped pins without restarts: watch ``--snapshot FILE`` and apply a newer signed file.

``PinWatcher`` polls the path's ``(mtime_ns, size, inode)`` every ``interval`` seconds
(portable, cheap, no dependency; an atomic rename changes the inode, an in-place
copy the size or mtime). When it changed, the file is read and handed to
``SnapshotStore.apply_pinned``: the same checks as any snapshot (signature, compile,
scope, expiry policy, high-water mark), persisted as last-known-good exactly as the
pin at start, and swapped in atomically (requests in flight finish on the old one).

What it never does is stop serving: an older version (rollback), the same version
with another hash (an alarm, logged at ERROR by the store), a bad signature, a
missing or unreadable file all leave the current snapshot served.

A file still being copied in place parses as no envelope, or as one without a
payload or signature: that is not a rejection but "not complete yet", retried on
every poll until it is. Each distinct problem is logged once: the content of every
file handed to the store is remembered by its SHA-256, so the same bytes are never
checked (or logged) twice, however often the file is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from google.protobuf.message import DecodeError

from dataplane.files import read_regular
from dataplane.snapshot.files import MAX_ENVELOPE_FILE_BYTES
from dataplane.snapshot.serving import ServingState
from dataplane.snapshot.store import ApplyResult, SnapshotStore
from signalbox.api.config.v1 import snapshot_pb2

log = logging.getLogger("signalbox.dataplane.config")

DEFAULT_POLL_INTERVAL_S = 2.0
MAX_PIN_BYTES = MAX_ENVELOPE_FILE_BYTES
"""A larger file is not read (a snapshot of 10,000 tenants is a few MiB): one warning, kept serving."""

Fingerprint = tuple[int, int, int]
"""``(mtime_ns, size, inode)`` of the pin file."""


def fingerprint(path: Path) -> Fingerprint:
    """What the watcher compares between polls; raises ``OSError`` (e.g. the file is missing).

    Anything but a regular file is an ``OSError`` too: a directory cannot be a pin, and
    reading a FIFO might never end and hold up the node's stop.
    """
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "not a regular file")
    return st.st_mtime_ns, st.st_size, st.st_ino


def warn_if_expired(state: ServingState, *, allow_expired: bool, now: float) -> bool:
    """Log a warning when ``state`` is past its expiry and served only thanks to ``allow_expired``."""
    expires_at = state.config.expires_at
    if not allow_expired or expires_at is None or expires_at > now:
        return False
    log.warning(
        "serving snapshot %d although it expired %.0fs ago: --allow-expired is set (a site "
        "without trusted time). Expiry is not checked; rollback protection still is. Distribute "
        "a newer signed pin to replace it",
        state.version,
        now - expires_at,
    )
    return True


class PinWatcher:
    """Poll one pin file and apply what is newer; ``run()`` until ``close()``."""

    def __init__(
        self,
        store: SnapshotStore,
        path: Path,
        *,
        interval: float = DEFAULT_POLL_INTERVAL_S,
        allow_expired: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"pin poll interval must be positive, not {interval}")
        self._store = store
        self._path = Path(path)
        self._interval = interval
        self._allow_expired = allow_expired
        self._clock = clock
        self._seen: Fingerprint | None = None
        """The fingerprint of the file last handled (applied, refused or the one at start)."""
        self._content: bytes = b""
        """SHA-256 of the bytes last handed to the store."""
        self._problem = ""
        """The kind of problem last logged, so a lasting one is logged once."""
        self._closed = asyncio.Event()
        self.polls = 0
        """Completed polls (for status output and tests)."""
        self.last_result: ApplyResult | None = None
        """What the store decided about the last file handed to it."""

    @property
    def path(self) -> Path:
        return self._path

    def prime(self) -> None:
        """Remember the file as it is now: call before the node reads the pin at start.

        Taken before the read, so a file replaced in between is noticed at the first poll
        (and, if its bytes are those served, acknowledged silently).
        """
        try:
            self._seen = fingerprint(self._path)
        except OSError:
            self._seen = None

    async def run(self) -> None:
        """Poll until ``close()``; a poll that fails unexpectedly is logged and the next one runs."""
        while not self._closed.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):  # not wait_for: it can lose a cancel on 3.11
                    await self._closed.wait()
            if self._closed.is_set():
                break
            try:
                await self.poll()
            except Exception:
                log.exception(
                    "pin %s: poll failed; still serving snapshot %d", self._path, self._store.version
                )
            self.polls += 1

    def close(self) -> None:
        """Stop after the current poll (an apply in progress finishes: nothing half-applied)."""
        self._closed.set()

    async def poll(self) -> ApplyResult | None:
        """Look at the file once; apply it when it is new. None when nothing was handed to the store."""
        try:
            current = fingerprint(self._path)
        except OSError as exc:
            self._seen = None
            self._report(
                "unreadable",
                "pin %s cannot be read (%s); still serving snapshot %d",
                self._path,
                exc.strerror or type(exc).__name__,
                self._store.version,
            )
            return None
        if current == self._seen:
            return None
        if current[1] > MAX_PIN_BYTES:
            self._seen = current
            self._report(
                "too large",
                "pin %s is %d bytes, more than the %d a snapshot file may have; not read, still "
                "serving snapshot %d",
                self._path,
                current[1],
                MAX_PIN_BYTES,
                self._store.version,
            )
            return None
        try:
            # Checked again on what is opened: the path may have been swapped since the stat
            # (a FIFO would hold this watcher, and the node's stop, waiting for a writer).
            raw = await asyncio.to_thread(read_regular, self._path, MAX_PIN_BYTES)
        except OSError as exc:
            # Not remembered as seen: read again at the next poll.
            self._report(
                "unreadable",
                "pin %s cannot be read (%s); still serving snapshot %d",
                self._path,
                exc.strerror or type(exc).__name__,
                self._store.version,
            )
            return None
        digest = hashlib.sha256(raw).digest()
        if digest == self._content:
            self._seen = current
            return None
        envelope, incomplete = _parse(raw)
        if envelope is None:
            # Most likely copied in place and not complete yet: retried at every poll (not
            # remembered as seen), logged once however long the copy takes.
            self._report(
                "incomplete",
                "pin %s is not a complete signed envelope yet (%s); retrying every %gs. Replace "
                "pin files with an atomic rename (write a temporary file beside it, then mv)",
                self._path,
                incomplete,
                self._interval,
            )
            return None
        self._seen, self._content = current, digest
        result = await self._store.apply_pinned(raw, envelope)
        self.last_result = result
        if not result.accepted:
            # The store logged why (the same bytes never come back here); say what still serves.
            self._problem = "refused"
            log.info("pin %s not applied; still serving snapshot %d", self._path, self._store.version)
        elif result.changed:
            self._problem = ""
            log.info("pin %s: now serving snapshot %d", self._path, result.version)
            if self._store.current is not None:
                warn_if_expired(self._store.current, allow_expired=self._allow_expired, now=self._clock())
        return result

    def _report(self, kind: str, message: str, *args: object) -> None:
        if kind != self._problem:
            self._problem = kind
            log.warning(message, *args)


def _parse(raw: bytes) -> tuple[snapshot_pb2.SignedEnvelope | None, str]:
    """The envelope in ``raw``, or None and why it is not (yet) a complete one."""
    if not raw:
        return None, "empty file"
    envelope = snapshot_pb2.SignedEnvelope()
    try:
        envelope.ParseFromString(raw)
    except DecodeError:
        return None, "does not parse"
    if not envelope.payload or not envelope.signatures:
        return None, "no payload or no signature"
    return envelope, ""
