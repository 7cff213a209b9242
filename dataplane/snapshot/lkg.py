"""The node's last-known-good snapshot and high-water mark on disk.

Files under ``<data_dir>/snapshot/``: ``lkg.envelope`` (the exact ``SignedEnvelope``
bytes), ``hwm.json`` (``{"version": N, "sha256": "<hex>", "node_group": "<group>"}``)
and ``trust.json`` (the learned trust set, see ``dataplane.snapshot.trust``). The
high-water mark is kept apart from the envelope so deleting or replacing the envelope
can never roll the node back, and it is as hard to lose as the envelope: a store whose
``lkg.envelope`` exists without ``hwm.json`` refuses to start (``SnapshotFileInvalid``)
unless the operator says ``reset_high_water_mark`` (logged at ERROR); the mark then
restarts from the last-known-good. Every file here is 0600 in a 0700 directory:
snapshots name the node's providers and identity hashes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dataplane.errors import SnapshotFileInvalid
from dataplane.snapshot.files import atomic_write, envelope_parts, private_dir, read_regular
from signalbox.api.config.v1 import snapshot_pb2

SNAPSHOT_DIR = "snapshot"
"""Under a node's data dir: last-known-good, high-water mark and the learned trust set."""
LKG_FILE = "lkg.envelope"
HWM_FILE = "hwm.json"
MAX_HWM_FILE_BYTES = 1024 * 1024
"""What write_hwm writes is about 150 bytes; a larger file is refused unread."""


@dataclass(frozen=True, slots=True)
class HighWaterMark:
    version: int
    sha256: bytes
    node_group: str = ""
    """The group whose version chain the mark is on ("": from before groups, any chain).
    Versions count per group: a node moved to another group (a new certificate, a new
    --node-group) starts on that group's chain; the scope check keeps the old group's
    snapshots out."""


def write_lkg(
    directory: Path,
    data: bytes | snapshot_pb2.SignedEnvelope | tuple[snapshot_pb2.SignedEnvelope, memoryview],
    hwm: HighWaterMark,
) -> None:
    """``data``: the file's bytes, an envelope, or an envelope without its payload and
    the payload (written in pieces: the megabytes are not copied into one message)."""
    if isinstance(data, snapshot_pb2.SignedEnvelope):
        data = data.SerializeToString()  # here, off the event loop: megabytes at fleet size
    parts = envelope_parts(*data) if isinstance(data, tuple) else [data]
    private_dir(directory)
    first = not (directory / HWM_FILE).exists()
    if first:
        # The very first time the mark goes first: a crash in between must not leave an
        # envelope without a mark, which refuses to start.
        write_hwm(directory, hwm)
    atomic_write(directory / LKG_FILE, *parts)
    if not first:
        write_hwm(directory, hwm)


def write_hwm(directory: Path, hwm: HighWaterMark) -> None:
    private_dir(directory)
    body = json.dumps(
        {"version": hwm.version, "sha256": hwm.sha256.hex(), "node_group": hwm.node_group}
    ).encode()
    atomic_write(directory / HWM_FILE, body)


def read_hwm(directory: Path) -> HighWaterMark | None:
    path = directory / HWM_FILE
    try:
        # Bounded and without blocking: a FIFO planted here hung the start.
        data = json.loads(read_regular(path, MAX_HWM_FILE_BYTES))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SnapshotFileInvalid(f"{path}: unreadable high-water mark: {exc.strerror or exc}") from exc
    except (ValueError, RecursionError) as exc:
        # RecursionError: nested past json's depth limit, which is no ValueError.
        raise SnapshotFileInvalid(f"{path}: unreadable high-water mark: not JSON") from exc
    # Checked exactly as write_hwm writes it: int() would take 2.7 or true as a version and
    # raise OverflowError (no ValueError: a traceback at start) for Infinity or 1e400.
    version = data.get("version") if isinstance(data, dict) else None
    sha256 = data.get("sha256") if isinstance(data, dict) else None
    group = data.get("node_group", "") if isinstance(data, dict) else None
    if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version < 2**64:
        problem = "version: must be a whole number 0..2^64-1"
    elif not isinstance(sha256, str) or len(sha256) != 64 or not _is_hex(sha256):
        problem = "sha256: must be 64 hex digits"
    elif not isinstance(group, str):
        problem = "node_group: must be a string"
    else:
        return HighWaterMark(version, bytes.fromhex(sha256), group)
    # Without a trustworthy mark, rollback protection is gone: refuse to start.
    raise SnapshotFileInvalid(f"{path}: unreadable high-water mark: {problem}")


def _is_hex(text: str) -> bool:
    return text.isascii() and all(c in "0123456789abcdefABCDEF" for c in text)
